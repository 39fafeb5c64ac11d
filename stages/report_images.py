"""Report an image study (--study): seaborn figures and a Markdown page rendered from the template
(reports/templates/images.md.j2) and the findings evaluate_images recorded (wdlab/cifar10/findings.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from wdlab import figures, pages, stage
from wdlab.cifar10 import findings, plots
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
    evaluated = stage.image_stage("evaluate_images", args.study)
    metrics = read_json(args.metrics, made_by=evaluated, required=("findings",))
    study = settings.study(args.study)
    regularizer = study.regularizer
    by_seed = read_table(args.by_seed, evaluated, required=BY_SEED_COLUMNS)
    by_seed = by_seed[by_seed["regularizer"] == regularizer]
    by_lambda = means(read_table(args.table, evaluated, required=("lambda", "seeds", "diverged", "epochs_run")))
    folder = RunFolder(args.grids / regularizer)
    made_by = stage.image_stage("train_images", args.study, regularizer)
    setup = read_json(folder.record, made_by=made_by)  # the grid's record: device, formats and image counts
    history = read_table(
        folder.history, made_by, required=("seed", "lambda", "epoch", "train_accuracy", "test_accuracy", "w_norm")
    )
    layer_norms = read_table(folder.layer_norms, made_by, required=("seed", "lambda", "epoch", "layer", "norm"))
    chosen = (metrics.get("chosen_by_validation") or {}).get("lambda")
    decayed = findings.decayed_grids(args.grids, settings, args.study)
    rotations = [
        findings.rotation(name, grid, study.train, stage.image_stage("train_images", args.study, name))
        for name, grid in decayed.items()
    ]

    figures.set_theme()
    pngs = [
        plots.accuracy_vs_lambda(by_seed, by_lambda, chosen, args.figures / "accuracy_vs_lambda.png"),
        plots.gap_vs_lambda(by_seed, by_lambda, args.figures / "gap_vs_lambda.png"),
        plots.curves(history, args.figures / "curves.png"),
        plots.layer_norms(layer_norms, args.figures / "layer_norms.png"),
        *(plots.angular_updates(r, args.figures / f"angular_updates_{r.regularizer}.png") for r in rotations),
    ]
    page = render_page(args.template, metrics, setup, settings, args.study, figures.relative_to_page(pngs, args.page))
    records = {
        made_by: folder.record,
        stage.image_stage("headline_images", args.study): RunFolder(args.headline).record,
    }
    tracker = Tracker(settings.tracking, settings.tracking.experiment(args.study))
    figures.publish(args.page, page, pngs, tracker, records)


def means(summary: pd.DataFrame) -> pd.DataFrame:
    """Per λ, each metric's mean over seeds under the metric's own name; `diverged` if any seed did."""
    means = summary.rename(columns={c: c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")})
    return means.assign(diverged=summary["diverged"] > 0)


# ── the page ──────────────────────────────────────────────────────────────────────────────────────


def render_page(
    template: Path, metrics: dict, setup: dict, settings: Settings, key: str, figure_links: list[str]
) -> str:
    """The page of image study `key`: its template, given the metrics (whose `findings` each sentence turns on, and
    whose `dataset` names the data), the grid's run record (`setup`: image counts, device), the settings, the tables
    and the figures' links."""
    study = settings.study(key)
    definition = REGISTRY[study.regularizer]
    return pages.render(
        template,
        m=metrics,
        f=metrics["findings"],
        study=study,
        key=key,
        dataset=metrics["dataset"],
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
            layer: f"{round(100 * (ratio - 1)):+d} %" for layer, ratio in x["per_layer"].items()
        }
        for x in equilibrium["strengths"].values()
    }
    table = pd.DataFrame(columns).fillna("—").rename_axis("layer").reset_index()
    return pages.markdown(table, ("left",) + ("right",) * len(columns))


def parser() -> argparse.ArgumentParser:
    cli = stage.add_study(
        stage.parser_with_paths(
            __doc__,
            "python -m stages.report_images",
            {
                "metrics": "the DVC metrics file evaluate_images wrote, with its findings",
                "by-seed": "final metrics per (regulariser, seed, strength)",
                "table": "the study's regulariser: final metrics per strength over seeds",
                "headline": "the headline run's folder: its run record",
                "grids": "the grids' folder: the studied regulariser's history, layer norms and run record",
                "page": "the report page (output)",
                "figures": "the folder of the report's figures (output)",
                "template": "the page's Jinja2 template",
            },
        )
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
