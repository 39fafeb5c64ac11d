"""Weight decay in two CIFAR-10 nets: the reference's plain CNN (no normalisation), where λ limits the scale of the
function, beside the BatchNorm ResNet, whose scale-invariant convs λ gives a larger effective learning rate instead.
Writes the plain grid's metrics with the page's claims as `findings` (wdlab/cifar10/architectures.py), figures of both
grids against λ over seeds, and the page from reports/templates/architectures_images.md.j2."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from wdlab import figures, pages, stage
from wdlab.cifar10 import architectures
from wdlab.cifar10.architectures import NETS, Grid
from wdlab.cifar10.model import net_shape
from wdlab.datasets.registry import get as get_dataset
from wdlab.files import write_json
from wdlab.settings import Settings
from wdlab.tracking import Tracker


def main(settings: Settings, args: argparse.Namespace) -> None:
    study = settings.study(args.study)
    strengths = {"resnet": study.strengths.l2, "plain": study.plain.l2}
    grids = {
        net: architectures.read_grid(net, getattr(args, net), grid, study, architectures.made_by(net, args.study))
        for net, grid in strengths.items()
    }
    plain = architectures.grid_metrics(grids["plain"], len(study.seeds))
    dataset = get_dataset(study.dataset).source_record(study.download.md5)
    metrics = plain | {"dataset": dataset, "findings": architectures.claims(grids, strengths)}
    write_json(args.metrics, metrics)
    figures.set_theme()
    pngs = [
        plot_accuracy_and_gap(grids, args.figures / "accuracy_gap_vs_lambda.png"),
        plot_layer_norms(grids, args.figures / "layer_norms_vs_lambda.png"),
    ]
    page = render_page(args.template, metrics, grids, settings, args.study, figures.relative_to_page(pngs, args.page))
    records = {architectures.made_by(net, args.study): grid.record for net, grid in grids.items()}
    tracker = Tracker(settings.tracking, settings.tracking.experiment(args.study))
    figures.publish(args.page, page, pngs, tracker, records, folder="architectures")


def render_page(
    template: Path, metrics: dict, grids: Mapping[str, Grid], settings: Settings, key: str, links: list[str]
) -> str:
    """The page of image study `key`: its template, given the plain grid's metrics and findings, both nets' recipes,
    tables and figures."""
    study = settings.study(key)
    return pages.render(
        template,
        m=metrics,
        f=metrics["findings"],
        study=study,
        key=key,
        dataset=metrics["dataset"],
        nets=NETS,
        shapes={net: net_shape(study, net) for net in NETS},
        recipes={"resnet": study.train, "plain": study.plain.train},
        net_table=architectures.net_table(grids),
        layer_tables={net: architectures.layer_table(grid) for net, grid in grids.items()},
        figures=links,
    )


# ── figures: the mean over seeds with its 95 % t-interval ────────────────────────────────────────


def plot_accuracy_and_gap(grids: Mapping[str, Grid], path: Path) -> Path:
    long = architectures.finished_rows(grids)
    long = long.assign(test=100 * long["test_accuracy"], gap=100 * long["gap_accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = ((axes[0], "test", "test accuracy (%)"), (axes[1], "gap", "train − test accuracy (points)"))
    for ax, column, label in panels:
        figures.curves_vs_strength(ax, long, column, "net")
        figures.lambda_axis(ax, long["lambda"])
        ax.set(xlabel="weight decay λ", ylabel=label)
    axes[1].get_legend().remove()
    fig.suptitle(f"Test accuracy and generalisation gap against λ, both nets\n({figures.band_note(long)})")
    return figures.save(fig, path)


def plot_layer_norms(grids: Mapping[str, Grid], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(grids), figsize=(8 * len(grids), 4.8), squeeze=False)
    for ax, (net, grid) in zip(axes[0], grids.items()):
        long = architectures.layer_norms_long(grid)
        sns.lineplot(
            data=long,
            x="lambda",
            y="value",
            hue="layer",
            style="BatchNorm after it",
            style_order=["yes: scale-invariant", "no"],
            hue_order=grid.layers,
            markers=True,
            ax=ax,
            **figures.SEED_BAND,
        )
        figures.lambda_axis(ax, long["lambda"])
        ax.set(yscale="log", xlabel="weight decay λ", ylabel="‖W‖₂ after training", title=NETS[net])
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"‖W‖ of every layer against λ\n({figures.band_note(grids['plain'].finals)})")
    return figures.save(fig, path)


def parser() -> argparse.ArgumentParser:
    return stage.add_study(
        stage.parser_with_paths(
            __doc__,
            "python -m stages.compare_architectures",
            {
                "resnet": "the ResNet's L2 grid folder (train_images@<study>-l2): history, layer norms, run record",
                "plain": "the plain CNN's L2 grid folder (train_images_plain@<study>): the same files",
                "metrics": "the plain grid's DVC metrics file, with the page's findings (output)",
                "page": "the comparison page (output)",
                "figures": "the folder of its figures (output)",
                "template": "the page's Jinja2 template",
            },
        )
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
