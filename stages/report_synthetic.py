"""Report the synthetic study: seaborn figures and a Markdown page that leads with the finding."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from wdlab import figures, stage
from wdlab.files import read_json, read_table, write_text
from wdlab.results import fmt_lambda, markdown_table
from wdlab.settings import Settings
from wdlab.tracking import Tracker

log = logging.getLogger("wd-lab.report_synthetic")

HISTORY_COLUMNS = ("lambda", "epoch", "train_loss", "test_loss", "w_norm")


def main(settings: Settings, args: argparse.Namespace) -> None:
    metrics = read_json(args.metrics, made_by="evaluate_synthetic")
    by_lambda = read_table(args.table, "evaluate_synthetic", required=tuple(TABLE_COLUMNS))
    grid_history = read_table(args.grid_history, "train_synthetic@grid", required=HISTORY_COLUMNS)
    headline_history = read_table(args.headline_history, "train_synthetic@headline", required=HISTORY_COLUMNS)
    contrast = contrast_lambda(settings.wd, metrics)

    figures.set_theme()
    pngs = [
        plot_loss_curves(grid_history, headline_history, contrast, args.figures / "loss_curves.png"),
        plot_loss_vs_lambda(by_lambda, metrics, args.figures / "loss_vs_lambda.png"),
        plot_norm_vs_lambda(by_lambda, args.figures / "wnorm_vs_lambda.png"),
        plot_norm_vs_epoch(grid_history, args.figures / "wnorm_vs_epoch.png"),
    ]
    write_text(args.page, render_page(metrics, by_lambda, contrast, settings, figures.relative_to_page(pngs, args.page)))
    records = {"train_synthetic@grid": args.grid_record, "train_synthetic@headline": args.headline_record}
    Tracker(settings.tracking, settings.tracking.experiment_synthetic).attach_report(records, pngs + [args.page])
    log.info("wrote %s and %d figures", args.page, len(pngs))


def contrast_lambda(wd: float, metrics: dict) -> float:
    """The regularised run shown beside λ = 0: the headline λ, or the cross-validated one when wd = 0."""
    return wd if wd > 0 else metrics["cv"]["best_lambda"]


def plot_loss_curves(grid_history: pd.DataFrame, headline_history: pd.DataFrame, contrast: float, path: Path) -> Path:
    runs = {0.0: grid_history[grid_history["lambda"] == 0.0]}
    runs[contrast] = headline_history if headline_history["lambda"].iloc[0] == contrast else grid_history[grid_history["lambda"] == contrast]
    fig, axes = plt.subplots(1, len(runs), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, (lam, history) in zip(axes[0], runs.items()):
        long = history.melt(id_vars="epoch", value_vars=["train_loss", "test_loss"], var_name="split", value_name="loss")
        long["split"] = long["split"].str.removesuffix("_loss")
        sns.lineplot(data=long, x="epoch", y="loss", hue="split", ax=ax)
        ax.set(yscale="log", title=f"λ = {fmt_lambda(lam)}", xlabel="epoch", ylabel="squared loss (ŷ − y)²/2")
    fig.suptitle("Without weight decay the test loss stays high while the train loss vanishes")
    return figures.save(fig, path)


def plot_loss_vs_lambda(by_lambda: pd.DataFrame, metrics: dict, path: Path) -> Path:
    long = by_lambda.melt(id_vars="lambda", value_vars=["train_loss", "test_loss", "cv_loss", "ridge_test_loss"], var_name="curve", value_name="loss")
    long["curve"] = long["curve"].map({
        "train_loss": "SGD train", "test_loss": "SGD test", "cv_loss": "SGD cross-validation", "ridge_test_loss": "exact ridge test",
    })
    fig, ax = plt.subplots(figsize=(10, 4.8))
    sns.lineplot(data=long, x="lambda", y="loss", hue="curve", style="curve", markers=True, dashes=False, ax=ax)
    ax.axhline(metrics["reference"]["noise_floor"], color="grey", linestyle=":", label="noise floor σ²/2")
    ax.axvline(metrics["cv"]["best_lambda"], color="black", linestyle="--", linewidth=1, label="λ picked by CV")
    figures.lambda_axis(ax, by_lambda["lambda"])
    ax.set(yscale="log", xlabel="weight decay λ", ylabel="final squared loss", title="Test loss falls by orders of magnitude as λ grows")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return figures.save(fig, path)


def plot_norm_vs_lambda(by_lambda: pd.DataFrame, path: Path) -> Path:
    long = by_lambda.melt(id_vars="lambda", value_vars=["w_norm", "ridge_w_norm"], var_name="model", value_name="norm")
    long["model"] = long["model"].map({"w_norm": "SGD, 100-epoch budget", "ridge_w_norm": "exact ridge"})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=long, x="lambda", y="norm", hue="model", style="model", markers=True, dashes=False, ax=ax)
    figures.lambda_axis(ax, by_lambda["lambda"])
    ax.set(yscale="log", xlabel="weight decay λ", ylabel="‖w‖₂", title="Weight decay shrinks the weights")
    return figures.save(fig, path)


def plot_norm_vs_epoch(grid_history: pd.DataFrame, path: Path) -> Path:
    lambdas = sorted(grid_history["lambda"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=grid_history, x="epoch", y="w_norm", hue="lambda", palette=figures.lambda_palette(lambdas), ax=ax)
    ax.set(yscale="log", xlabel="epoch", ylabel="‖w‖₂", title="Each epoch multiplies w by about (1 − ηλ)^(steps)")
    ax.legend(title="λ", fontsize="small", ncols=2)
    return figures.save(fig, path)


def render_page(metrics: dict, by_lambda: pd.DataFrame, contrast: float, settings: Settings, figure_links: list[str]) -> str:
    base = by_lambda.set_index("lambda").loc[0.0] if 0.0 in set(by_lambda["lambda"]) else None
    reg = by_lambda.set_index("lambda").loc[contrast]
    best = metrics["cv"]["best_lambda"]
    chosen = by_lambda.set_index("lambda").loc[best]
    head = metrics["headline"]
    spec = settings.synthetic
    lines = [
        "# Weight decay on high-dimensional linear regression",
        "",
        f"_n_train = {spec.data.n_train}, n_test = {spec.data.n_test}, d = {spec.data.n_features}; "
        f"SGD, batch {spec.train.batch_size}, lr {spec.train.lr:g}, {spec.train.epochs} epochs, "
        f"`{spec.train.implementation}` implementation, seed {settings.seed}._",
        "",
        "## Finding",
        "",
    ]
    if base is not None:
        ratio = base["test_loss"] / reg["test_loss"]
        lines.append(
            f"Without weight decay (λ = 0) SGD fits the {spec.data.n_train} training points almost exactly "
            f"(train loss {base['train_loss']:.2g}) but the test loss is {base['test_loss']:.3g}: it overfits. "
            f"With λ = {fmt_lambda(contrast)} the train loss rises to {reg['train_loss']:.2g} while the test loss "
            f"falls to {reg['test_loss']:.3g}, {ratio:,.0f}× lower, and ‖w‖ shrinks from {base['w_norm']:.3g} to {reg['w_norm']:.3g}."
        )
    lines += ["", cv_sentence(metrics, chosen), "", optimum_sentence(by_lambda, metrics, spec.train.epochs), ""]
    lines += [
        f"Headline run (`wd` = {fmt_lambda(head['lambda'])}): train loss {head['train_loss']:.3g}, "
        f"test loss {head['test_loss']:.3g}, ‖w‖ = {head['w_norm']:.3g}.",
        "",
        "## Figures",
        "",
        *[f"![{Path(link).stem}]({link})" for link in figure_links],
        "",
        "## Metrics per λ",
        "",
        markdown_table(by_lambda, TABLE_COLUMNS),
        "",
        "_Generated by the `report_synthetic` stage of dvc.yaml from the study's metrics; rerun `dvc repro` to refresh._",
        "",
    ]
    return "\n".join(lines)


def cv_sentence(metrics: dict, chosen: pd.Series) -> str:
    best = metrics["cv"]["best_lambda"]
    return (
        f"{metrics['cv']['folds']}-fold cross-validation on the training set (the test set never takes part) picks "
        f"λ = {fmt_lambda(best)}; its test loss is {chosen['test_loss']:.3g}, against "
        f"{chosen['ridge_test_loss']:.3g} for the exact ridge solution at that λ."
    )


def optimum_sentence(by_lambda: pd.DataFrame, metrics: dict, epochs: int) -> str:
    """How far SGD is from the exact optimum of its own objective, and where it closes the gap."""
    ratio = by_lambda["test_loss"] / by_lambda["ridge_test_loss"]
    close = by_lambda.loc[ratio <= 1.25, "lambda"]
    reach = (
        f"SGD comes within 25% of the exact ridge test loss only from λ = {fmt_lambda(close.min())} on"
        if len(close) else "SGD stays more than 25% above the exact ridge test loss at every λ of the grid"
    )
    return (
        f"{reach}; below that, what remains after {epochs} epochs is the random initialisation, which each "
        f"step shrinks only by the factor (1 − ηλ). The exact ridge test loss is "
        f"{by_lambda['ridge_test_loss'].min():.3g}–{by_lambda['ridge_test_loss'].max():.3g} across the grid; predicting "
        f"the training mean (w = 0) gives {metrics['reference']['zero_weight_test_loss']:.3g}, and the noise floor σ²/2 "
        f"is {metrics['reference']['noise_floor']:.2g}."
    )


TABLE_COLUMNS = {
    "lambda": "λ", "train_loss": "train loss", "test_loss": "test loss", "w_norm": "‖w‖",
    "cv_loss": "CV loss", "ridge_test_loss": "exact ridge test loss", "diverged": "diverged",
}


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(__doc__, "python -m stages.report_synthetic", {
        "metrics": "the DVC metrics file evaluate_synthetic wrote",
        "table": "final metrics per λ",
        "headline-history": "the headline run's per-epoch history",
        "grid-history": "the grid's per-epoch history",
        "headline-record": "the headline run's run record",
        "grid-record": "the grid's run record",
        "page": "the report page (output)",
        "figures": "the folder of the report's figures (output)",
    })


if __name__ == "__main__":
    stage.run_stage(main, parser())
