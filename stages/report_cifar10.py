"""Report the CIFAR-10 study: seaborn figures and a Markdown page rendered from its template
(reports/templates/cifar10.md.j2) and the findings evaluate_cifar10 recorded (wdlab/cifar10/findings.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from wdlab import figures, pages, stage
from wdlab.cifar10 import findings
from wdlab.cifar10.findings import Rotation
from wdlab.files import RunFolder, read_json, read_table
from wdlab.regularizers import BASELINE, REGISTRY
from wdlab.results import fmt_lambda
from wdlab.settings import Settings
from wdlab.tracking import Tracker

BY_SEED_COLUMNS = (
    "regularizer",
    "seed",
    "lambda",
    "train_accuracy",
    "valid_accuracy",
    "test_accuracy",
    "gap_accuracy",
    "gap_loss",
    "w_norm",
)


def main(settings: Settings, args: argparse.Namespace) -> None:
    metrics = read_json(args.metrics, made_by="evaluate_cifar10", required=("findings",))
    regularizer = settings.cifar10.regularizer
    by_seed = read_table(args.by_seed, "evaluate_cifar10", required=BY_SEED_COLUMNS)
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
    decayed = findings.decayed_grids(args.grids, settings)
    rotations = [findings.rotation(name, grid, settings.cifar10.train) for name, grid in decayed.items()]

    figures.set_theme()
    pngs = [
        plot_accuracy_vs_lambda(by_seed, by_lambda, chosen, args.figures / "accuracy_vs_lambda.png"),
        plot_gap_vs_lambda(by_seed, by_lambda, args.figures / "gap_vs_lambda.png"),
        plot_curves(history, args.figures / "curves.png"),
        plot_layer_norms(layer_norms, args.figures / "layer_norms.png"),
        *(plot_angular_updates(r, args.figures / f"angular_updates_{r.regularizer}.png") for r in rotations),
    ]
    page = render_page(args.template, metrics, setup, settings, figures.relative_to_page(pngs, args.page))
    records = {made_by: folder.record, "headline_cifar10": RunFolder(args.headline).record}
    figures.publish(args.page, page, pngs, Tracker(settings.tracking, settings.tracking.experiment_cifar10), records)


def means(summary: pd.DataFrame) -> pd.DataFrame:
    """Per λ, each metric's mean over seeds under the metric's own name; `diverged` if any seed did."""
    means = summary.rename(columns={c: c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")})
    return means.assign(diverged=summary["diverged"] > 0)


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
            label=f"picked by validation (λ = {fmt_lambda(chosen)})",
        )
    mark_diverged(ax, by_lambda)
    figures.lambda_axis(ax, by_lambda["lambda"])
    ax.set(
        xlabel="weight decay λ",
        ylabel="accuracy (%)",
        title=f"Train, validation and test accuracy against λ\n({figures.band_note(by_seed)})",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return figures.save(fig, path)


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
    fig.suptitle(f"The generalisation gap against λ\n({figures.band_note(by_seed)})")
    return figures.save(fig, path)


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
    fig.suptitle("Loss, accuracy and ‖θ‖ per epoch at each λ (mean over seeds, 95 % band)")
    return figures.save(fig, path)


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
    title = "Final ‖W‖ of each layer per λ" + (", relative to λ = 0" if relative else "") + " (mean over seeds)"
    ax.set(xlabel="weight decay λ", ylabel="layer (input → output)", title=title)
    return figures.save(fig, path)


# ── the rotational equilibrium, measured ──────────────────────────────────────────────────────────


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
    fig.suptitle(f"Angle per step of each BatchNorm-ed conv against the equilibrium θ*\n({method}; θ* = {formula})")
    return figures.save(fig, path)


# ── the page ──────────────────────────────────────────────────────────────────────────────────────


def render_page(template: Path, metrics: dict, setup: dict, settings: Settings, figure_links: list[str]) -> str:
    """The study page: its template, given the metrics (whose `findings` each sentence turns on), the grid's run
    record (`setup`: image counts, device), the settings, the tables and the figures' links."""
    study = settings.cifar10
    definition = REGISTRY[study.regularizer]
    return pages.render(
        template,
        m=metrics,
        f=metrics["findings"],
        study=study,
        r=definition,
        baseline=BASELINE,
        optimizer=definition.cifar_method(study.train),
        setup=setup,
        figures=figure_links,
        table=per_lambda_table(metrics["grid"]),
        layer_tables={name: layer_table(e) for name, e in metrics["findings"]["equilibrium"].items() if e["strengths"]},
        tolerance=findings.TOLERANCE,
        last_epochs=findings.LAST_EPOCHS,
        same_rate=findings.SAME_RATE,
        settling=findings.SETTLING_EFOLDS,
    )


def percent(summary: dict, key: str = "mean", unit: str = "%") -> str:
    """An accuracy (or its std) of a summary over seeds in percent; — for a diverged run's."""
    value = summary[key]
    return "—" if value is None else f"{100 * value:.1f}{unit}"


def per_lambda_table(grid: dict) -> str:
    """Per λ, the final metrics' means over seeds (test accuracy with its std), the epochs run and whether a seed
    diverged."""
    rows = [
        {
            "λ": fmt_lambda(float(key.removeprefix("lambda_"))),
            "train acc": percent(run["train_accuracy"]),
            "valid acc": percent(run["valid_accuracy"]),
            "test acc": percent(run["test_accuracy"]),
            "± std": percent(run["test_accuracy"], "std", unit=""),
            "gap (points)": percent(run["gap_accuracy"], unit=""),
            "gap (loss)": pages.number(run["gap_loss"]["mean"], ".3f"),
            "‖θ‖": pages.number(run["w_norm"]["mean"], ".1f"),
            "epochs": str(run["epochs_run"]),
            "diverged": "yes" if run["diverged"] else "no",
        }
        for key, run in grid.items()
    ]
    return pages.markdown(pd.DataFrame(rows), ("right",) * 10)


def layer_table(equilibrium: dict) -> str:
    """Per scale-invariant layer (input to output), each λ's measured angle over the last epochs against θ*."""
    columns = {
        f"λ = {fmt_lambda(x['strength'])}": {
            layer: f"{100 * (ratio - 1):+.0f} %" for layer, ratio in x["per_layer"].items()
        }
        for x in equilibrium["strengths"].values()
    }
    table = pd.DataFrame(columns).fillna("—").rename_axis("layer").reset_index()
    return pages.markdown(table, ("left",) + ("right",) * len(columns))


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.report_cifar10",
        {
            "metrics": "the DVC metrics file evaluate_cifar10 wrote, with its findings",
            "by-seed": "final metrics per (regulariser, seed, strength)",
            "table": "the study's regulariser: final metrics per strength over seeds",
            "headline": "the headline run's folder: its run record",
            "grids": "the grids' folder: the studied regulariser's history, layer norms and run record",
            "page": "the report page (output)",
            "figures": "the folder of the report's figures (output)",
            "template": "the page's Jinja2 template",
        },
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
