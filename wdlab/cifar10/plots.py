"""The CIFAR-10 study's figures (report_images): accuracy and the generalisation gap against λ, the curves per epoch,
each layer's final norm, and each decayed grid's angle per step against the equilibrium. Titles describe what a figure
shows; what it means is the page's, from the findings."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from wdlab import figures
from wdlab.cifar10.findings import Rotation
from wdlab.regularizers import REGISTRY
from wdlab.results import fmt_lambda


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


def accuracy_vs_lambda(by_seed: pd.DataFrame, by_lambda: pd.DataFrame, chosen: float | None, path: Path) -> Path:
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


def gap_vs_lambda(by_seed: pd.DataFrame, by_lambda: pd.DataFrame, path: Path) -> Path:
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


def curves(history: pd.DataFrame, path: Path) -> Path:
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
    fig.suptitle(f"Loss, accuracy and ‖θ‖ per epoch at each λ\n({figures.band_note(history)})")
    return figures.save(fig, path)


def layer_norms(layer_norms: pd.DataFrame, path: Path) -> Path:
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


def angular_updates(rotation: Rotation, path: Path) -> Path:
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
