"""Every regulariser side by side, for one study (wdlab/regularizers.py defines them), each over its own
strength grid on every seed. One figure per question (loss or accuracy vs strength, sparsity vs strength, ‖w‖ vs
strength) and a page rendered from its template (reports/templates/regularizers_<study>.md.j2): the synthetic one from
the findings the evaluate stage recorded, each sentence turned by its verdict."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from wdlab import figures, pages, stage
from wdlab.files import grid_folders, read_json, read_table
from wdlab.metrics import SYNTHETIC
from wdlab.regularizers import BASELINE, REGISTRY, sharing_baseline_zero, zero_makers
from wdlab.results import fmt_lambda, pm, separated
from wdlab.settings import IMAGE_STUDIES, REGULARIZERS, Settings
from wdlab.tracking import Tracker


def main(settings: Settings, args: argparse.Namespace) -> None:
    synthetic = args.study == "synthetic"
    evaluated = "evaluate_synthetic" if synthetic else stage.image_stage("evaluate_images", args.study)
    metrics = read_json(args.metrics, made_by=evaluated)
    folders = grid_folders(args.grids, REGULARIZERS)
    figures.set_theme()
    if synthetic:
        by_seed = read_table(
            args.by_seed,
            "evaluate_synthetic",
            required=("regularizer", "seed", "lambda", "test_loss", "w_norm", "zeros"),
        )
        table = read_table(args.table, "evaluate_synthetic", required=("regularizer", "lambda", "test_loss_mean"))
        null = metrics["findings"]["null"]["test_loss"]["mean"]
        pngs = synthetic_figures(by_seed, settings.synthetic.data.n_features, null, args.figures)
        page = synthetic_page(args.template, metrics, settings, figures.relative_to_page(pngs, args.page))
        experiment = settings.tracking.experiment_synthetic
    else:
        by_seed = read_table(
            args.by_seed,
            evaluated,
            required=("regularizer", "seed", "lambda", "test_accuracy", "gap_accuracy", "w_norm"),
        )
        table = read_table(args.table, evaluated, required=("regularizer", "lambda", "test_accuracy_mean"))
        norms = pd.concat(
            [
                read_table(
                    folder.layer_norms,
                    stage.image_stage("train_images", args.study, name),
                    required=("regularizer", "seed", "lambda", "epoch", "layer", "norm"),
                )
                for name, folder in folders.items()
            ]
        )
        pngs = cifar_figures(by_seed, norms, args.figures)
        page = cifar_page(
            args.template, metrics, table, settings, args.study, figures.relative_to_page(pngs, args.page)
        )
    experiment = settings.tracking.experiment(args.study)
    records = {  # every grid's run
        (f"train_synthetic@{name}" if synthetic else stage.image_stage("train_images", args.study, name)): folder.record
        for name, folder in folders.items()
    }
    figures.publish(args.page, page, pngs, Tracker(settings.tracking, experiment), records, folder="comparison")


# ── figures: one panel per regulariser, each over its own strength grid, mean and 95 % band over seeds ─


def per_regularizer(
    by_seed: pd.DataFrame,
    draw: Callable[[plt.Axes, pd.DataFrame, str, bool], None],
    ylabel: str,
    title: str,
    path: Path,
    yscale: str = "linear",
    null: float | None = None,
) -> Path:
    """One panel per regulariser over its own grid; `null`: the null model's mean, a line across every panel."""
    present = [r for r in REGULARIZERS if r in set(by_seed["regularizer"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 4.4), sharey=True, squeeze=False)
    for ax, regularizer in zip(axes[0], present):
        rows = by_seed[by_seed["regularizer"] == regularizer]
        draw(ax, rows, regularizer, yscale == "log")
        if null is not None:
            ax.axhline(null, color="black", linestyle="-.", linewidth=1, label="null model (ŷ = ȳ_train)")
        figures.lambda_axis(ax, rows["lambda"])
        ax.set(yscale=yscale, xlabel=REGISTRY[regularizer].strength_label, ylabel=ylabel, title=regularizer)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0]:
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:
        fig.legend(
            handles, labels, loc="lower center", ncols=len(labels), fontsize="small", bbox_to_anchor=(0.5, -0.02)
        )
    fig.suptitle(f"{title}\n({figures.band_note(by_seed, log=yscale == 'log')})")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return figures.save(fig, path)


def lines(columns: dict[str, str], dashed: Sequence[str] = ()) -> Callable[[plt.Axes, pd.DataFrame, str, bool], None]:
    """A panel drawer: each column a curve (label: its name), dashed for the exact optima; on a log axis the band is
    the t-interval cut where it reaches 0."""

    def draw(ax: plt.Axes, rows: pd.DataFrame, regularizer: str, log: bool) -> None:
        for i, (column, label) in enumerate(columns.items()):
            sns.lineplot(
                data=rows,
                x="lambda",
                y=column,
                ax=ax,
                marker="o",
                color=sns.color_palette()[i],
                linestyle="--" if column in dashed else "-",
                label=label.format(exact=REGISTRY[regularizer].exact),
                **(figures.LOG_BAND if log else figures.SEED_BAND),
            )

    return draw


def synthetic_figures(by_seed: pd.DataFrame, n_features: int, null: float, folder: Path) -> list[Path]:
    return [
        per_regularizer(
            by_seed,
            lines(
                {"test_loss": "SGD test loss", "reference_test_loss": "exact optimum's test loss"},
                ["reference_test_loss"],
            ),
            "final test loss (ŷ − y)²/2",
            "Test loss vs strength, beside each regulariser's exact optimum and the null model",
            folder / "test_loss_vs_strength.png",
            yscale="log",
            null=null,
        ),
        per_regularizer(
            by_seed,
            lines({"zeros": "SGD: exact zeros", "reference_zeros": "exact optimum: zeros"}, ["reference_zeros"]),
            f"weights exactly 0 (of {n_features})",
            "Exact zeros vs strength",
            folder / "zeros_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"w_norm": "SGD ‖w‖", "reference_w_norm": "exact optimum's ‖w‖"}, ["reference_w_norm"]),
            "‖w‖₂",
            "‖w‖ vs strength",
            folder / "wnorm_vs_strength.png",
            yscale="log",
        ),
    ]


def cifar_figures(by_seed: pd.DataFrame, norms: pd.DataFrame, folder: Path) -> list[Path]:
    last = norms[norms["epoch"] == norms["epoch"].max()]
    layer_order = list(dict.fromkeys(last["layer"]))
    fig, axes = plt.subplots(1, 1, figsize=(10, 4.5))
    strongest = last.loc[last.groupby("regularizer")["lambda"].transform("max") == last["lambda"]]
    baseline = last[(last["regularizer"] == BASELINE) & (last["lambda"] == 0)]
    baseline = baseline.assign(regularizer=f"none ({BASELINE}, λ = 0)")
    shown = pd.concat([baseline, strongest], ignore_index=True)
    shown = shown.assign(run=shown["regularizer"] + shown["lambda"].map(lambda v: f" {fmt_lambda(v)}" if v else ""))
    sns.barplot(data=shown, x="layer", y="norm", hue="run", order=layer_order, ax=axes, **figures.LOG_BAND)
    axes.set(
        yscale="log",
        xlabel="layer",
        ylabel="‖W‖₂ after training",
        title="Per-layer weight norms: no regulariser vs each at its strongest",
    )
    axes.tick_params(axis="x", rotation=30)
    figures.save(fig, folder / "layer_norms.png")
    return [
        per_regularizer(
            by_seed,
            lines({"train_accuracy": "train", "valid_accuracy": "validation", "test_accuracy": "test"}),
            "final accuracy",
            "Accuracy vs strength, per regulariser",
            folder / "accuracy_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"gap_accuracy": "train − test accuracy"}),
            "generalisation gap",
            "Generalisation gap vs strength, per regulariser",
            folder / "gap_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"zero_fraction": "weights exactly 0"}),
            "fraction of conv/linear weights",
            "Exact zeros vs strength",
            folder / "zeros_vs_strength.png",
        ),
        per_regularizer(
            by_seed,
            lines({"w_norm": "‖θ‖"}),
            "‖θ‖₂ of conv/linear weights",
            "‖θ‖ vs strength",
            folder / "wnorm_vs_strength.png",
            yscale="log",
        ),
        folder / "layer_norms.png",
    ]


# ── the pages: their templates, given the numbers ────────────────────────────────────────────────────


def synthetic_page(template: Path, metrics: dict, settings: Settings, links: list[str]) -> str:
    """The synthetic comparison: every claim is a record of the metrics' `findings`, which the template reads."""
    compared, found = metrics["regularizers"], metrics["findings"]
    chosen = [r for r, c in compared.items() if c["cv_strength"] is not None]
    ranked = sorted(chosen, key=lambda r: compared[r]["test_loss"]["mean"])  # lowest mean test loss first
    rows = [
        {
            "regulariser": r,
            "CV strength": fmt_lambda(c["cv_strength"]) if c["cv_strength"] is not None else "none: all unstable",
            "on the grid's edge": found["regularizers"][r]["edge"]["edge"],
            SYNTHETIC["test_loss"].label: pm(c["test_loss"]),
            "exact optimum's test loss": pm(c["reference_test_loss"]),
            "against the null model": found["regularizers"][r].get("vs_null", {}).get("verdict", "—"),
            SYNTHETIC["w_norm"].label: pm(c["w_norm"]),
            SYNTHETIC["zeros"].label: pm(c["zeros"], SYNTHETIC["zeros"].format),
        }
        for r, c in compared.items()
    ]
    pairs = [
        {
            "first − second": key.replace("_vs_", " − "),
            "Δ test loss": pages.number(pair["mean"], "+.2g"),
            "95 % t-interval": pages.interval(pair),
            "seeds": str(pair["n"]),
            "verdict for the first": pair["verdict"],
        }
        for key, pair in found["pairwise"].items()
    ]
    return pages.render(
        template,
        m=metrics,
        f=found,
        spec=settings.synthetic,
        registry=REGISTRY,
        baseline=BASELINE,
        ranked=ranked,
        zero_makers=zero_makers(),
        figures=links,
        table=pages.markdown(pd.DataFrame(rows), ("left", "right", "left", "right", "right", "left", "right", "right")),
        pairs=pages.markdown(pd.DataFrame(pairs), ("left", "right", "right", "right", "left")) if pairs else None,
    )


def cifar_page(
    template: Path, metrics: dict, table: pd.DataFrame, settings: Settings, key: str, links: list[str]
) -> str:
    """An image study's comparison (`key`): each regulariser at the strength validation chooses, and at its
    strongest."""
    compared = metrics["regularizers"]
    ranked = sorted(compared, key=lambda r: -(compared[r]["test_accuracy"]["mean"] or 0))
    best = ranked[0]
    rows = [
        {
            "regulariser": r,
            "strength": fmt_lambda(c["valid_strength"]),
            "validation accuracy": pm(c["valid_accuracy"]),
            "test accuracy": pm(c["test_accuracy"]),
            "train − test gap": pm(c["gap_accuracy"]),
            "‖θ‖": pm(c["w_norm"]),
            "exact zeros": pm(c["zero_fraction"], ".2%"),
        }
        for r, c in compared.items()
    ]
    return pages.render(
        template,
        m=metrics,
        study=settings.study(key),
        key=key,
        dataset=metrics["dataset"],
        registry=REGISTRY,
        baseline=BASELINE,
        best=best,
        best_accuracy=pm(compared[best]["test_accuracy"]),
        above=[r for r in ranked[1:] if separated(compared[best]["test_accuracy"], compared[r]["test_accuracy"])],
        sharing=sharing_baseline_zero(list(compared)),
        strongest=strongest_rows(table),
        zero_makers=zero_makers(),
        figures=links,
        table=pages.markdown(pd.DataFrame(rows), ("left",) + ("right",) * 6),
    )


def strongest_rows(table: pd.DataFrame) -> list[dict]:
    """Each regulariser at its strongest trained strength beside none (l2's λ = 0): the gap, ‖θ‖ and exact zeros."""
    base = table[(table["regularizer"] == BASELINE) & (table["lambda"] == 0)]
    if base.empty:
        return []
    base = base.iloc[0]
    trained = table[table["gap_accuracy_mean"].notna()]  # a diverged strength has no final numbers
    strongest = trained.loc[trained.groupby("regularizer")["lambda"].idxmax()].set_index("regularizer")
    return [
        {
            "regularizer": r,
            "strength": strongest.loc[r, "lambda"],
            "gap": strongest.loc[r, "gap_accuracy_mean"],
            "gap_none": base["gap_accuracy_mean"],
            "w_norm": strongest.loc[r, "w_norm_mean"],
            "w_norm_none": base["w_norm_mean"],
            "zeros": strongest.loc[r, "zero_fraction_mean"],
        }
        for r in REGULARIZERS
        if r in strongest.index
    ]


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.compare_regularizers",
        {
            "metrics": "the study's DVC metrics file",
            "by-seed": "final metrics per (regulariser, seed, strength)",
            "table": "per (regulariser, strength): mean, std and 95 % interval over seeds",
            "grids": "the grids' folder: each regulariser's run record (and CIFAR-10 layer norms)",
            "page": "the comparison page (output)",
            "figures": "the folder of its figures (output)",
            "template": "the page's Jinja2 template",
        },
    )
    cli.add_argument("study", choices=("synthetic", *IMAGE_STUDIES), help="synthetic, or an image study")
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
