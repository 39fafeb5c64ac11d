"""Report the CIFAR-10 study: seaborn figures and a Markdown page that leads with the finding."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from wdlab import figures, stage
from wdlab.cifar10.schedule import step_lrs
from wdlab.cifar10.summary import gain_text
from wdlab.equilibrium import Equilibrium
from wdlab.files import RunFolder, grid_folders, read_json, read_table
from wdlab.regularizers import BASELINE, REGISTRY, Regularizer
from wdlab.results import fmt_lambda, markdown_table, pm_percent, separated
from wdlab.settings import CifarSettings, CifarTrain, Settings
from wdlab.tracking import Tracker


def main(settings: Settings, args: argparse.Namespace) -> None:
    metrics = read_json(args.metrics, made_by="evaluate_cifar10")
    regularizer = settings.cifar10.regularizer
    by_seed = read_table(
        args.by_seed,
        "evaluate_cifar10",
        required=(
            "regularizer",
            "seed",
            "lambda",
            "train_accuracy",
            "valid_accuracy",
            "test_accuracy",
            "gap_accuracy",
            "gap_loss",
            "w_norm",
        ),
    )
    finals = by_seed  # every regulariser's final metrics, for the equilibrium section
    by_seed = by_seed[by_seed["regularizer"] == regularizer]
    by_lambda = means(
        read_table(args.table, "evaluate_cifar10", required=("lambda", "seeds", "diverged", "epochs_run"))
    )
    folder, made_by = RunFolder(args.grids / regularizer), f"train_cifar10@{regularizer}"
    setup = read_json(folder.record, made_by=made_by)  # the grid's record: device, formats and image counts
    history = read_table(
        folder.history, made_by, required=("seed", "lambda", "epoch", "train_accuracy", "test_accuracy", "w_norm")
    )
    layer_norms = read_table(folder.layer_norms, made_by, required=("seed", "lambda", "epoch", "layer", "norm"))
    chosen = (metrics.get("chosen_by_validation") or {}).get("lambda")

    figures.set_theme()
    pngs = [
        plot_accuracy_vs_lambda(by_seed, by_lambda, chosen, args.figures / "accuracy_vs_lambda.png"),
        plot_gap_vs_lambda(by_seed, by_lambda, args.figures / "gap_vs_lambda.png"),
        plot_curves(history, args.figures / "curves.png"),
        plot_layer_norms(layer_norms, args.figures / "layer_norms.png"),
    ]
    rotations = [rotation(name, folder, settings.cifar10.train) for name, folder in decayed_grids(args.grids, settings)]
    pngs += [plot_angular_updates(r, args.figures / f"angular_updates_{r.regularizer}.png") for r in rotations]
    equilibrium = equilibrium_section(rotations, finals)
    page = render_page(metrics, by_lambda, setup, settings, figures.relative_to_page(pngs, args.page), equilibrium)
    records = {f"train_cifar10@{regularizer}": folder.record, "headline_cifar10": RunFolder(args.headline).record}
    figures.publish(args.page, page, pngs, Tracker(settings.tracking, settings.tracking.experiment_cifar10), records)


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def strength(value: float) -> str:
    return f"λ = {fmt_lambda(value)}"


def means(summary: pd.DataFrame) -> pd.DataFrame:
    """Per λ, each metric's mean over seeds under the metric's own name; `diverged` if any seed did."""
    means = summary.rename(columns={c: c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")})
    return means.assign(diverged=summary["diverged"] > 0)


def finite(by_lambda: pd.DataFrame) -> pd.DataFrame:
    return by_lambda[~by_lambda["diverged"].astype(bool)].dropna(subset=["test_accuracy"])


# ── figures ───────────────────────────────────────────────────────────────────────────────────────


def mark_diverged(ax: plt.Axes, by_lambda: pd.DataFrame) -> None:
    """A cross on the λ axis for each diverged run, so a missing point reads as 'diverged', not 'forgotten'."""
    diverged = by_lambda[by_lambda["diverged"].astype(bool)]
    if not diverged.empty:
        ax.scatter(
            diverged["lambda"],
            [0.02] * len(diverged),
            marker="x",
            s=80,
            color="black",
            transform=ax.get_xaxis_transform(),
            label="diverged (stopped)",
            zorder=5,
            clip_on=False,
        )


def plot_accuracy_vs_lambda(by_seed: pd.DataFrame, by_lambda: pd.DataFrame, chosen: float | None, path: Path) -> Path:
    long = by_seed.melt(
        id_vars=["seed", "lambda"],
        value_vars=["train_accuracy", "valid_accuracy", "test_accuracy"],
        var_name="split",
        value_name="accuracy",
    )
    long["split"] = long["split"].str.removesuffix("_accuracy")
    long["accuracy"] *= 100
    fig, ax = plt.subplots(figsize=(8, 4.8))
    figures.curves_vs_strength(ax, long.dropna(), "accuracy", "split")
    if chosen is not None:
        picked = 100 * by_lambda.loc[by_lambda["lambda"] == chosen, "test_accuracy"]
        ax.scatter(
            [chosen],
            picked,
            marker="*",
            s=260,
            color="black",
            zorder=6,
            clip_on=False,
            label=f"picked by validation ({strength(chosen)})",
        )
    mark_diverged(ax, by_lambda)
    figures.lambda_axis(ax, by_lambda["lambda"])
    ax.set(
        xlabel="weight decay λ",
        ylabel="accuracy (%)",
        title=f"{accuracy_title(by_lambda)}\n({figures.band_note(by_seed)})",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return figures.save(fig, path)


def accuracy_title(by_lambda: pd.DataFrame) -> str:
    runs = finite(by_lambda)
    if runs.empty:
        return "Every λ diverged: no accuracy to compare"
    top = runs.loc[runs["test_accuracy"].idxmax()]
    title = f"Test accuracy is highest at {strength(top['lambda'])} ({pct(top['test_accuracy'])})"
    base = runs[runs["lambda"] == 0.0]
    if not base.empty and top["lambda"] != 0.0:
        title += f", vs {pct(base['test_accuracy'].iloc[0])} at λ = 0"
    return title


def plot_gap_vs_lambda(by_seed: pd.DataFrame, by_lambda: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, column, scale, label in (
        (axes[0], "gap_accuracy", 100, "train − test accuracy (points)"),
        (axes[1], "gap_loss", 1, "test − train loss (cross-entropy)"),
    ):
        data = by_seed.dropna(subset=[column])
        sns.lineplot(x=data["lambda"], y=scale * data[column], marker="o", ax=ax, **figures.SEED_BAND)
        mark_diverged(ax, by_lambda)
        figures.lambda_axis(ax, by_lambda["lambda"])
        ax.set(xlabel="weight decay λ", ylabel=label)
    fig.suptitle(f"{gap_title(by_lambda)}\n({figures.band_note(by_seed)})")
    return figures.save(fig, path)


def gap_title(by_lambda: pd.DataFrame) -> str:
    runs = finite(by_lambda).sort_values("lambda")
    if len(runs) < 2:
        return "Generalisation gap per λ"
    first, last = runs.iloc[0], runs.iloc[-1]
    trend = "falls" if last["gap_accuracy"] < first["gap_accuracy"] else "rises"
    return (
        f"The generalisation gap {trend} from {100 * first['gap_accuracy']:.1f} points at {strength(first['lambda'])} "
        f"to {100 * last['gap_accuracy']:.1f} at {strength(last['lambda'])}"
    )


def plot_curves(history: pd.DataFrame, path: Path) -> Path:
    strengths = sorted(history["lambda"].unique())
    palette = {fmt_lambda(v): colour for v, colour in figures.lambda_palette(strengths).items()}
    history = history.assign(λ=history["lambda"].map(fmt_lambda))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, metric, label in ((axes[0], "loss", "cross-entropy"), (axes[1], "accuracy", "accuracy (%)")):
        long = history.melt(
            id_vars=["λ", "epoch"],
            value_vars=[f"train_{metric}", f"test_{metric}"],
            var_name="split",
            value_name=metric,
        )
        long["split"] = long["split"].str.removesuffix(f"_{metric}")
        if metric == "accuracy":
            long[metric] *= 100
        sns.lineplot(
            data=long,
            x="epoch",
            y=metric,
            hue="λ",
            style="split",
            palette=palette,
            ax=ax,
            legend=ax is axes[0],
            **figures.SEED_BAND,
        )
        ax.set(xlabel="epoch", ylabel=label)
    axes[0].legend(fontsize="x-small", ncols=2)
    sns.lineplot(
        data=history, x="epoch", y="w_norm", hue="λ", palette=palette, ax=axes[2], legend=False, **figures.SEED_BAND
    )
    axes[2].set(xlabel="epoch", ylabel="‖θ‖₂ (all parameters)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(curves_title(history))
    return figures.save(fig, path)


def curves_title(history: pd.DataFrame) -> str:
    last_epochs = history.sort_values("epoch").groupby(["lambda", "seed"]).tail(1).dropna(subset=["w_norm"])
    final = (
        last_epochs.groupby("lambda", as_index=False)[["train_accuracy", "test_accuracy"]].mean().sort_values("lambda")
    )
    if len(final) < 2:
        return "Training curves"
    first, last = final.iloc[0], final.iloc[-1]
    return (
        f"{strength(first['lambda'])} ends at {pct(first['train_accuracy'])} train / "
        f"{pct(first['test_accuracy'])} test accuracy, "
        f"{strength(last['lambda'])} at {pct(last['train_accuracy'])} / {pct(last['test_accuracy'])}"
    )


def plot_layer_norms(layer_norms: pd.DataFrame, path: Path) -> Path:
    final = layer_norms[layer_norms["epoch"] == layer_norms.groupby(["lambda", "seed"])["epoch"].transform("max")]
    table = final.pivot_table(index="layer", columns="lambda", values="norm", aggfunc="mean", dropna=False)
    table = table.reindex(pd.unique(layer_norms["layer"]))  # mean over seeds, layers from input to output
    relative = 0.0 in table.columns and table[0.0].notna().all()
    shown = table.div(table[0.0], axis=0) if relative else table
    shown.columns = [fmt_lambda(v) for v in shown.columns]
    fig, ax = plt.subplots(figsize=(1.1 * len(shown.columns) + 3, 0.45 * len(shown) + 2))
    sns.heatmap(
        shown,
        annot=True,
        fmt=".2f",
        cmap="viridis",
        ax=ax,
        cbar_kws={"label": "‖W‖ / ‖W‖ at λ = 0" if relative else "‖W‖₂"},
    )
    ax.set(xlabel="weight decay λ", ylabel="layer (input → output)", title=layer_title(shown, relative))
    return figures.save(fig, path)


def layer_title(shown: pd.DataFrame, relative: bool) -> str:
    finished = shown.dropna(axis="columns")
    if not relative or finished.shape[1] < 2:
        return "Final ‖W‖ of each layer per λ (mean over seeds)"
    strongest = finished.columns[-1]
    column = finished[strongest]
    low, high = f"{column.min():.0%}", f"{column.max():.0%}"
    if low == high:
        return f"λ = {strongest} leaves every layer about {low} of its λ = 0 weight norm"
    return f"λ = {strongest} leaves each layer {low}–{high} of its λ = 0 weight norm (least: {column.idxmin()})"


# ── the rotational equilibrium ────────────────────────────────────────────────────────────────────

TOLERANCE = 0.2  # "at equilibrium": the measured angular update within 20 % of the prediction
WITHIN = f"within {100 * TOLERANCE:.0f} %"
LAST_EPOCHS = 3  # "the last epochs" of a run, where the schedule's lr is lowest


@dataclass
class Rotation:
    """One regulariser's grid: each scale-invariant layer's angular update per epoch, measured and predicted."""

    regularizer: str
    equilibria: dict[float, Equilibrium]  # per λ > 0
    angles: pd.DataFrame  # per (seed, λ, layer, epoch ≥ 1): angular_update (measured), predicted (NaN at λ = 0), norm
    efolds: dict[float, float]  # per λ > 0: the relaxation towards equilibrium the whole run allows, in e-folds
    layers: list[str]  # the scale-invariant layers, input to output
    steps: int  # optimiser steps in the run

    def summary(self, strength: float) -> pd.DataFrame:
        """Per epoch: the median over layers of measured / predicted (both means over seeds), and its range."""
        rows = self.angles[self.angles["lambda"] == strength]
        means = rows.groupby(["epoch", "layer"])[["angular_update", "predicted"]].mean()
        ratio = (means["angular_update"] / means["predicted"]).groupby("epoch")
        return pd.DataFrame({"median": ratio.median(), "low": ratio.min(), "high": ratio.max()})

    def versus(self, strength: float, base: float = 0.0) -> float:
        """How many times further per step λ turns its layers than λ = `base` over the last epochs (median over
        layers of the ratio of the means over seeds); NaN if either is missing."""
        means = self.angles.groupby(["lambda", "layer", "epoch"])["angular_update"].mean()
        if strength not in means.index or base not in means.index:
            return math.nan
        last = sorted(self.angles["epoch"].unique())[-LAST_EPOCHS:]
        ratio = (means[strength] / means[base]).loc[(slice(None), last)]
        return float(ratio.groupby("layer").mean().median())


def decayed_grids(grids: Path, settings: Settings) -> list[tuple[str, RunFolder]]:
    """The grids whose strength is weight decay (l2 through SGD, decoupled through AdamW) with some λ > 0."""
    names = [
        name
        for name, strengths in settings.cifar10.strengths.model_dump().items()
        if any(REGISTRY[name].weight_decay(s) > 0 for s in strengths)
    ]
    return list(grid_folders(grids, names).items())


def equilibrium_of(definition: Regularizer, strength: float, train: CifarTrain) -> Equilibrium:
    """The equilibrium of a regulariser's optimiser at strength λ: SGD (Nesterov as configured) or AdamW."""
    nesterov = definition.optimizer == "sgd" and train.nesterov and train.momentum > 0
    return Equilibrium(definition.optimizer, definition.weight_decay(strength), train.momentum, nesterov)


def rotation(regularizer: str, folder: RunFolder, train: CifarTrain) -> Rotation:
    """The grid's measured angular updates beside the equilibrium under the schedule's η_t: the prediction for an
    epoch is the mean over its steps of θ*(η_t), as the measurement is the mean over its steps of the angle."""
    made_by = f"train_cifar10@{regularizer}"
    n_train = read_json(folder.record, made_by=made_by)["n_images"]["train"]
    table = read_table(
        folder.layer_norms,
        made_by,
        required=("seed", "lambda", "epoch", "layer", "norm", "angular_update", "scale_invariant"),
    )
    angles = table[table["scale_invariant"].astype(bool) & (table["epoch"] > 0)].dropna(subset=["angular_update"])
    definition = REGISTRY[regularizer]
    lrs = np.array(step_lrs(train, train.adamw_lr if definition.optimizer == "adamw" else train.lr, n_train))
    equilibria = {s: equilibrium_of(definition, s, train) for s in sorted(angles["lambda"].unique()) if s > 0}
    predicted = {s: eq.angular_update(lrs).mean(axis=1) for s, eq in equilibria.items()}  # [epoch]
    angles = angles.assign(
        predicted=[
            predicted[s][e - 1] if s in predicted else math.nan for s, e in zip(angles["lambda"], angles["epoch"])
        ]
    )
    efolds = {s: float(eq.relaxation_rate(lrs).sum()) for s, eq in equilibria.items()}
    return Rotation(regularizer, equilibria, angles, efolds, list(pd.unique(angles["layer"])), lrs.size)


def plot_angular_updates(rotation: Rotation, path: Path) -> Path:
    """Each scale-invariant layer's angular update per epoch (mean over seeds, solid) against the equilibrium under
    the schedule's η_t (dashed), one colour per λ."""
    data = rotation.angles.assign(λ=rotation.angles["lambda"].map(fmt_lambda))
    palette = {fmt_lambda(v): c for v, c in figures.lambda_palette(sorted(data["lambda"].unique())).items()}
    columns = min(4, len(rotation.layers))
    rows = -(-len(rotation.layers) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns + 2.5, 3.1 * rows + 1), sharex=True, squeeze=False)
    for ax, layer in zip(axes.flat, rotation.layers):
        rows_of = data[data["layer"] == layer]
        sns.lineplot(
            data=rows_of, x="epoch", y="angular_update", hue="λ", palette=palette, marker="o", ax=ax,
            legend=False, **figures.SEED_BAND,
        )  # fmt: skip
        predicted = rows_of.dropna(subset=["predicted"]).groupby(["λ", "epoch"], as_index=False)["predicted"].first()
        for label, curve in predicted.groupby("λ"):
            ax.plot(curve["epoch"], curve["predicted"], linestyle="--", color=palette[label], linewidth=1.5)
        ax.set(yscale="log", title=layer, xlabel="epoch", ylabel="angle per step (rad)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(rotation.layers) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colour, marker="o", label=f"λ = {label}") for label, colour in palette.items()]
    handles += [
        plt.Line2D([], [], color="grey", marker="o", label="measured\n(mean over seeds, 95 % band)"),
        plt.Line2D([], [], color="grey", linestyle="--", label="equilibrium θ*(η_t),\nmean over the epoch's steps"),
    ]
    axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    method = REGISTRY[rotation.regularizer].title
    formula = next(iter(rotation.equilibria.values())).formula() if rotation.equilibria else ""
    fig.suptitle(f"{angular_title(rotation)}\n({method}; θ* = {formula})")
    return figures.save(fig, path)


def angular_title(rotation: Rotation) -> str:
    if not rotation.equilibria:
        return "No λ > 0 in this grid: no equilibrium to compare with"
    strongest = max(rotation.equilibria)
    epochs = within(rotation.summary(strongest))
    if not epochs:
        return f"λ = {fmt_lambda(strongest)} never comes {WITHIN} of the equilibrium angle"
    return (
        f"λ = {fmt_lambda(strongest)} turns its layers at the equilibrium angle ({WITHIN}) in epochs "
        f"{epoch_ranges(epochs)}"
    )


def within(summary: pd.DataFrame) -> list[int]:
    """The epochs whose median layer is within TOLERANCE of the prediction."""
    return [int(e) for e in summary.index[(summary["median"] - 1).abs() <= TOLERANCE]]


def epoch_ranges(epochs: list[int]) -> str:
    """[2, 3, 4, 7] → '2–4, 7'."""
    spans: list[list[int]] = []
    for epoch in epochs:
        if spans and epoch == spans[-1][1] + 1:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


def signed_percent(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.0f} %"


SAME_RATE = 1.5  # turning layers less than this many times as far per step as λ = 0: "about λ = 0's effective lr"


def equilibrium_section(rotations: list[Rotation], finals: pd.DataFrame) -> str:
    """What the measured angular updates say, read off the numbers: which λ reach the equilibrium within the run,
    and what that predicts for accuracy, beside the accuracy measured."""
    if not rotations:
        return ""
    paragraphs = [
        "Every conv is followed by BatchNorm, so the loss sees only W/‖W‖: for these scale-invariant weights λ does "
        "not shrink the function, it sets how far each step turns W. Decay and gradient noise settle where the angle "
        "per step is θ* = √(2ηλ·c), c from the optimiser's momentum (van Laarhoven 2017; Wan et al. 2021; Kosson et "
        "al. 2024; `wdlab/equilibrium.py`). The figures compare, per layer and epoch, the measured mean angle "
        "between W before and after each step (from ‖W_t‖, ‖W_t+1‖ and ‖ΔW‖) with θ* under the schedule's η_t; "
        f"below, “{WITHIN}” is the median over the {len(rotations[0].layers)} BatchNorm-ed convs of the "
        "measured/predicted ratio (means over seeds), and an e-fold is the theory's relaxation time towards θ* "
        "(1/(4ηλ/(1 − μ)) steps for SGD, 1/(2ηλ) for AdamW). The head, with no normalisation after it, is left out."
    ]
    verdicts: list[str] = []
    for rotation in rotations:
        paragraph, verdict = rotation_paragraph(rotation, finals)
        paragraphs.append(paragraph)
        verdicts += verdict
    paragraphs.append(
        "**What this predicts for accuracy.** Through scale-invariant layers λ acts only as an effective learning "
        f"rate, the angle per step. A λ whose layers turn about as far per step as λ = 0's (less than {SAME_RATE:g}× "
        "over the last epochs) trains them the same way and should end near λ = 0's accuracy; a λ that reaches θ* "
        "keeps turning them while λ = 0 slows down as ‖W‖ grows, so only such a λ should move accuracy, in either "
        "direction (more rotation late in training is more noise: it can generalise better or keep the net from "
        "settling). "
        + (" ".join(verdicts) if verdicts else "No grid here has a λ = 0 run beside a λ > 0 to compare with.")
    )
    return "\n\n".join(paragraphs)


def rotation_paragraph(rotation: Rotation, finals: pd.DataFrame) -> tuple[str, list[str]]:
    """The grid's paragraph (each λ against θ*), and for each λ > 0 with a λ = 0 run beside it, the prediction for
    its accuracy against what was measured."""
    definition = REGISTRY[rotation.regularizer]
    eq = next(iter(rotation.equilibria.values()), None)
    head = f"**`{rotation.regularizer}` ({definition.title}{', θ* = ' + eq.formula() if eq else ''}).**"
    if eq is None:
        return f"{head} Its grid has no λ > 0: nothing to compare.", []
    accuracy = finals[finals["regularizer"] == rotation.regularizer].groupby("lambda")["test_accuracy"]
    means, spread = accuracy.mean(), accuracy.std()
    sentences, verdicts = [], []
    for strength in sorted(rotation.equilibria):
        summary = rotation.summary(strength).dropna()
        if summary.empty:
            continue
        epochs = within(summary)
        closest = (summary["median"] - 1).abs().idxmin()
        last = summary["median"].iloc[-LAST_EPOCHS:].mean()
        sentences.append(
            f"λ = {fmt_lambda(strength)}: its {rotation.steps} steps allow {rotation.efolds[strength]:.2g} e-folds; "
            + (f"measured {WITHIN} of θ* in epochs {epoch_ranges(epochs)}" if epochs else f"never {WITHIN} of θ*")
            + f" (closest at epoch {int(closest)}: {signed_percent(summary['median'][closest])}, layers "
            f"{signed_percent(summary['low'][closest])} to {signed_percent(summary['high'][closest])}), and "
            f"{signed_percent(last)} over the last {LAST_EPOCHS} epochs"
            + (", where η_t falls faster than ‖W‖ can follow." if last < 1 - TOLERANCE else ".")
            + (
                f" Test accuracy {pct(means[strength])}"
                + (f" ± {100 * spread[strength]:.1f}" if math.isfinite(spread[strength]) else "")
                + "."
                if 0.0 not in means and strength in means  # no λ = 0 of its own to set it against below
                else ""
            )
        )
        speed = rotation.versus(strength)
        if math.isfinite(speed) and strength in means and 0.0 in means:
            prediction = (
                "about λ = 0's accuracy"
                if speed < SAME_RATE
                else "an accuracy apart from λ = 0's"
                if epochs
                else "some difference from λ = 0, from a faster rotation short of θ*"
            )
            std = f", seed std {100 * spread[0.0]:.1f}" if math.isfinite(spread[0.0]) else ""
            verdicts.append(
                f"`{rotation.regularizer}` λ = {fmt_lambda(strength)} "
                f"{'reaches' if epochs else 'never reaches'} θ* and turns its layers {speed:.2g}× as far per step "
                f"as λ = 0 over the last {LAST_EPOCHS} epochs: the theory predicts {prediction}; measured: "
                f"{pct(means[strength])} test accuracy against {pct(means[0.0])} at λ = 0 "
                f"({100 * (means[strength] - means[0.0]):+.1f} points{std})."
            )
    base = rotation.angles[rotation.angles["lambda"] == 0.0].groupby("epoch")["angular_update"].median()
    if len(base) > 1:
        sentences.append(
            f"λ = 0 has no equilibrium: its median layer's angle per step goes from {base.iloc[0]:.2g} rad in epoch "
            f"{int(base.index[0])} to {base.iloc[-1]:.2g} in epoch {int(base.index[-1])}, as ‖W‖ grows and η_t falls."
        )
    if 0.0 not in means and len(means):
        sentences.append(
            "This grid has no λ = 0 run of its own (its optimiser without decay is not SGD's λ = 0), so each λ's "
            "test accuracy (mean ± std over seeds) stands beside its angles instead of a prediction against λ = 0."
        )
    if max(rotation.efolds.values()) < 3:
        sentences.append(
            "With fewer than 3 e-folds in the run, no λ of this grid can settle: θ* is where it was heading, not "
            "where it is (a longer run, a larger λ or lr gets there)."
        )
    return f"{head} " + " ".join(sentences), verdicts


# ── the page ──────────────────────────────────────────────────────────────────────────────────────


def render_page(
    metrics: dict,
    by_lambda: pd.DataFrame,
    setup: dict,
    settings: Settings,
    figure_links: list[str],
    equilibrium: str = "",
) -> str:
    study = settings.cifar10
    head = metrics["headline"]
    title = "Weight decay" if study.regularizer == BASELINE else f"The `{study.regularizer}` regulariser"
    lines = [
        f"# {title} on CIFAR-10",
        "",
        "_Every regulariser side by side: [the comparison page](regularizers_cifar10.md). This page studies "
        f"`cifar10.regularizer`; the λ below is its strength ({REGISTRY[study.regularizer].strength_label})._",
        "",
        setup_line(study, setup),
        "",
        "## Finding",
        "",
        finding(metrics, study.regularizer, study.strength_grid),
        "",
        interpretation(by_lambda),
        "",
        f"Headline run (`cifar10.wd` = {fmt_lambda(head['lambda'])}): {headline_sentence(head)}",
        "",
        *(
            ["## Weight decay as an effective learning rate: the rotational equilibrium", "", equilibrium, ""]
            if equilibrium
            else []
        ),
        "## Figures",
        "",
        *[f"![{Path(link).stem}]({link})" for link in figure_links],
        "",
        f"## Metrics per λ (means over {metrics['seeds']} seed{'s' if metrics['seeds'] != 1 else ''})",
        "",
        markdown_table(by_lambda, TABLE_COLUMNS, TABLE_FORMATS),
        "",
        (
            "Gap = train − test accuracy (percentage points) and test − train cross-entropy, both measured in eval "
            "mode without augmentation. ‖θ‖ is the norm of all parameters. " + curves_note(study.data.curve_subset)
        ),
        "",
        "_Generated by the `report_cifar10` stage of dvc.yaml from the study's metrics; rerun `dvc repro` to refresh._",
        "",
    ]
    return "\n".join(lines)


def setup_line(study: CifarSettings, setup: dict) -> str:
    t = study.train
    n = setup.get("n_images", {})
    optimizer = REGISTRY[study.regularizer].cifar_method(t)
    decayed = (
        "every parameter is decayed, biases and BatchNorm scales/shifts included"
        if t.decay_norm_and_bias
        else "λ applies to conv and linear weights only; biases and BatchNorm scales/shifts are not decayed"
    )
    return (
        f"_{n.get('train', '?'):,} training images (class-balanced subset), "
        f"{n.get('valid', '?'):,} held-out validation images, {n.get('test', '?'):,} test images. "
        f"ResNet-9 layout, width {study.model.width}; {optimizer}; "
        f"{decayed}. {t.schedule.capitalize()} schedule with {t.warmup_fraction:.0%} warm-up, batch {t.batch_size}, "
        f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}, label smoothing {t.label_smoothing:g}, augmentation "
        f"{'flip + crop' if study.data.augment else 'off'}; {setup.get('device', '?')} ({setup.get('formats', '?')}). "
        f"Seeds {', '.join(map(str, study.seeds))}: each draws its own initial weights, batch order and augmentation; "
        f"the training and validation images are the same for all (split seed {study.data.split_seed}). "
        "Figures show the mean over seeds with its 95 % confidence band._"
    )


def finding(metrics: dict, regularizer: str, strength_grid: tuple[float, ...]) -> str:
    """The conclusion and the numbers behind it: the λ validation picks, against λ = 0, with the seed spread."""
    chosen, grid = metrics.get("chosen_by_validation"), metrics["grid"]
    if chosen is None:
        return "Every λ of the grid diverged; lower `cifar10.train.lr` and rerun."
    text = (
        f"Validation accuracy on held-out training images (mean over {metrics['seeds']} seeds) "
        f"picks {strength(chosen['lambda'])}: "
        f"test accuracy {pm_percent(chosen['test_accuracy'])}"
    )
    base = grid.get("lambda_0")
    if base and not base["diverged"] and chosen["lambda"] != 0.0:
        delta = 100 * (chosen["test_accuracy"]["mean"] - base["test_accuracy"]["mean"])
        text += f", {delta:+.1f} points against no weight decay (λ = 0: {pm_percent(base['test_accuracy'])})"
        text += gain_verdict(
            chosen.get("test_accuracy_gain"), separated(chosen["test_accuracy"], base["test_accuracy"])
        )
    else:
        text += "."
    top = metrics.get("highest_test_accuracy")
    if top and top["lambda"] != chosen["lambda"]:
        text += (
            f" The highest mean test accuracy of the grid, {pm_percent(top['test_accuracy'])} "
            f"at {strength(top['lambda'])}, "
            "is reported but not used to choose: choosing on the test set would make it an optimistic estimate."
        )
    if chosen["lambda"] == max(strength_grid) > 0:
        text += (
            f" {strength(chosen['lambda'])} is the grid's largest, so the optimum may lie beyond it: extend "
            f"`cifar10.strengths.{regularizer}` (e.g. add {3 * chosen['lambda']:g} and {10 * chosen['lambda']:g}) "
            "and rerun."
        )
    return text


def gain_verdict(gain: dict | None, unpaired: bool | None) -> str:
    """Whether the chosen λ's test-accuracy gain over λ = 0 exceeds the seed spread, judged seed by seed (`gain`: the
    paired differences' mean and 95 % interval) and said beside what the two unpaired intervals show."""
    if not gain or gain.get("ci_low") is None:
        return (
            "; with one seed the spread is unknown: run several (`-S 'cifar10.seeds=[0,1,2]'`) "
            "to tell a difference from noise."
        )
    paired = (
        ". Seed by seed (a seed starts from the same weights and batch order at every λ, so the pairs share that "
        f"noise) the gain is {gain_text(gain)}"
    )
    if gain["ci_low"] > 0 or gain["ci_high"] < 0:
        return paired + (
            ": it exceeds the seed spread"
            + (", although the two means' unpaired intervals overlap." if unpaired is False else ".")
        )
    return paired + (
        ": the interval holds 0, so the difference is within the seed spread; more seeds (`cifar10.seeds`) would tell."
    )


def interpretation(by_lambda: pd.DataFrame) -> str:
    """Two or three sentences read off the numbers: accuracy, gap and weight norm as λ grows."""
    runs = finite(by_lambda).sort_values("lambda")
    sentences = []
    if len(runs) >= 2:
        first, last = runs.iloc[0], runs.iloc[-1]
        spread = 100 * (runs["test_accuracy"].max() - runs["test_accuracy"].min())
        sentences.append(
            f"Across the grid test accuracy spans {spread:.1f} points "
            f"({pct(runs['test_accuracy'].min())}–{pct(runs['test_accuracy'].max())})"
            + (", within the noise of a single seed at this budget." if spread < 1.0 else ".")
        )
        gap_trend = "falls" if last["gap_accuracy"] < first["gap_accuracy"] else "rises"
        sentences.append(
            f"From {strength(first['lambda'])} to {strength(last['lambda'])} the generalisation gap {gap_trend} from "
            f"{100 * first['gap_accuracy']:.1f} to {100 * last['gap_accuracy']:.1f} points (train accuracy "
            f"{pct(first['train_accuracy'])} → {pct(last['train_accuracy'])}), and ‖θ‖ goes from {first['w_norm']:.1f} "
            f"to {last['w_norm']:.1f}"
            f"{' — it falls at every step of λ' if runs['w_norm'].is_monotonic_decreasing else ''}."
        )
    diverged = by_lambda[by_lambda["diverged"].astype(bool)]
    if not diverged.empty:
        which = ", ".join(fmt_lambda(v) for v in diverged["lambda"])
        sentences.append(
            f"λ = {which} diverged (non-finite loss) and was stopped early; its values are left empty "
            "and it is never picked."
        )
    return " ".join(sentences) or "Too few finished runs to compare λ."


def curves_note(curve_subset: int) -> str:
    """What each curve is measured on, so a reader can trust them."""
    if curve_subset == 0:
        return "Every epoch is measured on all images of each split."
    return (
        f"The per-epoch curves are measured on fixed class-balanced subsets of {curve_subset:,} images of each split "
        "(the same images every epoch and run), the last epoch and every number in this table on all images "
        "(`cifar10.data.curve_subset`)."
    )


def headline_sentence(head: dict) -> str:
    if head["diverged"]:
        return f"{head['diverged']} seed(s) diverged (non-finite loss), the first after {head['epochs_run']} epochs."
    return (
        f"test accuracy {pm_percent(head['test_accuracy'])}, train accuracy {pm_percent(head['train_accuracy'])}, "
        f"gap {100 * head['gap_accuracy']['mean']:.1f} points, ‖θ‖ = {head['w_norm']['mean']:.1f} (means over seeds)."
    )


TABLE_COLUMNS = {
    "lambda": "λ",
    "train_accuracy": "train acc",
    "valid_accuracy": "valid acc",
    "test_accuracy": "test acc",
    "test_accuracy_std": "± std",
    "gap_accuracy": "gap (points)",
    "gap_loss": "gap (loss)",
    "w_norm": "‖θ‖",
    "epochs_run": "epochs",
    "diverged": "diverged",
}
TABLE_FORMATS = {
    "train_accuracy": pct,
    "valid_accuracy": pct,
    "test_accuracy": pct,
    "test_accuracy_std": lambda v: f"{100 * v:.1f}",
    "gap_accuracy": lambda v: f"{100 * v:.1f}",
    "gap_loss": lambda v: f"{v:.3f}",
    "w_norm": lambda v: f"{v:.1f}",
    "epochs_run": lambda v: f"{int(v)}",
}


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.report_cifar10",
        {
            "metrics": "the DVC metrics file evaluate_cifar10 wrote",
            "by-seed": "final metrics per (regulariser, seed, strength)",
            "table": "the study's regulariser: final metrics per strength over seeds",
            "headline": "the headline run's folder: its run record",
            "grids": "the grids' folder: the studied regulariser's history, layer norms and run record",
            "page": "the report page (output)",
            "figures": "the folder of the report's figures (output)",
        },
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
