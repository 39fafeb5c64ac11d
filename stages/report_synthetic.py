"""Report the synthetic study over seeds: seaborn figures with 95 % t-intervals and a Markdown page rendered from its
template (reports/templates/synthetic.md.j2) and the findings the evaluate stage recorded."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from wdlab import figures, pages, stage
from wdlab.files import RunFolder, read_json, read_table
from wdlab.metrics import STUDY_TABLE, SYNTHETIC
from wdlab.regularizers import BASELINE, REGISTRY
from wdlab.results import fmt_lambda, pm
from wdlab.settings import Settings
from wdlab.tracking import Tracker

HISTORY_COLUMNS = ("seed", "lambda", "epoch", "train_loss", "test_loss", "w_norm")
BY_SEED_COLUMNS = (
    "regularizer",
    "seed",
    "lambda",
    "train_loss",
    "test_loss",
    "w_norm",
    "zeros",
    "cv_loss",
    "reference_test_loss",
    "reference_w_norm",
    "diverged",
)


def main(settings: Settings, args: argparse.Namespace) -> None:
    metrics = read_json(args.metrics, made_by="evaluate_synthetic")
    regularizer = settings.synthetic.regularizer
    by_seed = read_table(args.by_seed, "evaluate_synthetic", required=BY_SEED_COLUMNS)
    by_seed = by_seed[by_seed["regularizer"] == regularizer]
    folder = RunFolder(args.grids / regularizer)
    grid_history = read_table(folder.history, f"train_synthetic@{regularizer}", required=HISTORY_COLUMNS)
    contrast = metrics["cv"]["best_lambda"]  # the regularised run shown beside λ = 0

    figures.set_theme()
    pngs = [
        plot_loss_curves(grid_history, contrast, regularizer, args.figures / "loss_curves.png"),
        plot_loss_vs_lambda(by_seed, metrics, regularizer, args.figures / "loss_vs_lambda.png"),
        plot_norm_vs_lambda(
            by_seed, regularizer, settings.synthetic.train.epochs, args.figures / "wnorm_vs_lambda.png"
        ),
        plot_norm_vs_epoch(grid_history, regularizer, args.figures / "wnorm_vs_epoch.png"),
        plot_cv_choices(metrics, regularizer, args.figures / "cv_choices.png"),
    ]
    page = render_page(args.template, metrics, settings, figures.relative_to_page(pngs, args.page))
    records = {f"train_synthetic@{regularizer}": folder.record}
    figures.publish(args.page, page, pngs, Tracker(settings.tracking, settings.tracking.experiment_synthetic), records)


# ── figures: every curve is the mean over seeds with its 95 % t-interval ─────────────────────────


def plot_loss_curves(grid_history: pd.DataFrame, contrast: float | None, regularizer: str, path: Path) -> Path:
    shown = (0.0,) if contrast is None else (0.0, contrast)  # None: cross-validation chose no strength
    runs = {strength: grid_history[grid_history["lambda"] == strength] for strength in shown}
    fig, axes = plt.subplots(1, len(runs), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, (strength, history) in zip(axes[0], runs.items()):
        long = history.melt(
            id_vars=["seed", "epoch"], value_vars=["train_loss", "test_loss"], var_name="split", value_name="loss"
        )
        long["split"] = long["split"].str.removesuffix("_loss")
        sns.lineplot(data=long, x="epoch", y="loss", hue="split", ax=ax, **figures.LOG_BAND)
        ax.set(
            yscale="log",
            title=f"{regularizer}, {REGISTRY[regularizer].symbol} = {fmt_lambda(strength)}",
            xlabel="epoch",
            ylabel="squared loss (ŷ − y)²/2",
        )
    fig.suptitle(f"Train and test loss per epoch\n({figures.band_note(grid_history, log=True)})")
    return figures.save(fig, path)


def plot_loss_vs_lambda(by_seed: pd.DataFrame, metrics: dict, regularizer: str, path: Path) -> Path:
    curves = {
        "train_loss": "SGD train",
        "test_loss": "SGD test",
        "cv_loss": "SGD cross-validation",
        "reference_test_loss": f"{REGISTRY[regularizer].exact} test",
    }
    long = by_seed.melt(id_vars=["seed", "lambda"], value_vars=list(curves), var_name="curve", value_name="loss")
    long["curve"] = long["curve"].map(curves)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    figures.curves_vs_strength(ax, long, "loss", "curve", log=True)
    null = metrics["findings"]["null"]["test_loss"]
    ax.axhline(null["mean"], color="black", linestyle="-.", linewidth=1, label="null model (ŷ = ȳ_train) test")
    ax.axhline(metrics["reference"]["noise_floor"], color="grey", linestyle=":", label="noise floor σ²/2")
    if metrics["cv"]["best_lambda"] is not None:
        ax.axvline(
            metrics["cv"]["best_lambda"],
            color="black",
            linestyle="--",
            linewidth=1,
            label="strength with the lowest mean CV loss",
        )
    figures.lambda_axis(ax, by_seed["lambda"])
    ax.set(
        yscale="log",
        xlabel=REGISTRY[regularizer].strength_label,
        ylabel="final squared loss",
        title=f"{regularizer}: final losses against the strength\n({figures.band_note(by_seed, log=True)})",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return figures.save(fig, path)


def plot_norm_vs_lambda(by_seed: pd.DataFrame, regularizer: str, epochs: int, path: Path) -> Path:
    long = by_seed.melt(
        id_vars=["seed", "lambda"], value_vars=["w_norm", "reference_w_norm"], var_name="model", value_name="norm"
    )
    long["model"] = long["model"].map(
        {"w_norm": f"SGD, {epochs}-epoch budget", "reference_w_norm": REGISTRY[regularizer].exact}
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    figures.curves_vs_strength(ax, long, "norm", "model", log=True)
    figures.lambda_axis(ax, by_seed["lambda"])
    ax.set(
        yscale="log",
        xlabel=REGISTRY[regularizer].strength_label,
        ylabel="‖w‖₂",
        title=f"{regularizer}: ‖w‖ against the strength\n({figures.band_note(by_seed, log=True)})",
    )
    return figures.save(fig, path)


def plot_norm_vs_epoch(grid_history: pd.DataFrame, regularizer: str, path: Path) -> Path:
    strengths = sorted(grid_history["lambda"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(
        data=grid_history,
        x="epoch",
        y="w_norm",
        hue="lambda",
        palette=figures.lambda_palette(strengths),
        ax=ax,
        **figures.LOG_BAND,
    )
    ax.set(
        yscale="log",
        xlabel="epoch",
        ylabel="‖w‖₂",
        title=f"{regularizer}: ‖w‖ per epoch at each strength\n({figures.band_note(grid_history, log=True)})",
    )
    ax.legend(title=REGISTRY[regularizer].symbol, fontsize="small", ncols=2)
    return figures.save(fig, path)


def plot_cv_choices(metrics: dict, regularizer: str, path: Path) -> Path:
    chosen = {float(key.removeprefix("lambda_")): n for key, n in metrics["cv"]["chosen"].items()}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.barplot(
        x=[fmt_lambda(strength) for strength in chosen], y=list(chosen.values()), color=sns.color_palette()[0], ax=ax
    )
    ax.set(
        xlabel=REGISTRY[regularizer].strength_label,
        ylabel="seeds",
        title=f"The {REGISTRY[regularizer].symbol} each seed's {metrics['cv']['folds']}-fold cross-validation chooses",
    )
    ax.yaxis.get_major_locator().set_params(integer=True)
    return figures.save(fig, path)


# ── the page ──────────────────────────────────────────────────────────────────────────────────────


def render_page(template: Path, metrics: dict, settings: Settings, figure_links: list[str]) -> str:
    """The study page: its template, given the metrics (whose `findings` each sentence turns on), the settings, the
    tables and the figures' links."""
    spec = settings.synthetic
    definition = REGISTRY[spec.regularizer]
    band = metrics["findings"].get("reference_band")
    return pages.render(
        template,
        m=metrics,
        f=metrics["findings"],
        spec=spec,
        r=definition,
        baseline=BASELINE,
        figures=figure_links,
        table=per_lambda_table(metrics["grid"], metrics["seeds"] * metrics["cv"]["folds"], spec.regularizer),
        reference_table=reference_table(band) if band else None,
    )


def reference_table(band: dict) -> str:
    """Each (strength, metric) the reference publishes: our mean and range over seeds, its band, and how many of our
    seeds fall inside it."""
    rows = [
        {
            "λ": fmt_lambda(float(key.removeprefix("lambda_"))),
            "metric": SYNTHETIC[metric].label,
            "here: mean (min–max)": f"{row['mean']:.3g} ({row['min']:.3g}–{row['max']:.3g})",
            "reference band": f"{row['low']:g}–{row['high']:g}",
            "mean inside": "yes" if row["mean_inside"] else "no",
            "seeds inside": f"{row['seeds_inside']} of {row['seeds']}",
        }
        for key, by_metric in band["by_strength"].items()
        for metric, row in by_metric.items()
    ]
    return pages.markdown(pd.DataFrame(rows), ("right", "left", "right", "right", "left", "right"))


def per_lambda_table(grid: dict, folds: int, regularizer: str) -> str:
    """Per strength, each metric's mean ± std over seeds, the seeds that diverged and the CV folds (of `folds`, over
    seeds) that were unstable; headers from the metric registry (wdlab/metrics.py)."""
    rows = [
        {REGISTRY[regularizer].symbol: fmt_lambda(float(key.removeprefix("lambda_")))}
        | {SYNTHETIC[m].label_for(regularizer): pm(run[m], SYNTHETIC[m].format) for m in STUDY_TABLE}
        | {"seeds diverged": str(run["diverged"]), "unstable CV folds": f"{run['unstable_folds']} of {folds}"}
        for key, run in grid.items()
    ]
    return pages.markdown(pd.DataFrame(rows), ("right",) * (len(STUDY_TABLE) + 3))


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.report_synthetic",
        {
            "metrics": "the DVC metrics file evaluate_synthetic wrote",
            "by-seed": "final metrics per (regulariser, seed, strength)",
            "grids": "the grids' folder: the studied regulariser's history and run record",
            "page": "the report page (output)",
            "figures": "the folder of the report's figures (output)",
            "template": "the page's Jinja2 template",
        },
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
