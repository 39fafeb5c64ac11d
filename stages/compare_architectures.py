"""Weight decay in two CIFAR-10 nets: the reference's plain CNN (no normalisation), where λ limits the scale of the
function, beside the BatchNorm ResNet, whose conv weights are scale-invariant, so λ there sets their effective
learning rate instead. Test accuracy, generalisation gap and ‖W‖ per layer against λ for both, over seeds; the plain
grid's metrics (the ResNet's are evaluate_cifar10's); one page that states the contrast from the numbers."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from wdlab import figures, stage
from wdlab.cifar10.model import make_net, net_shape, scale_invariant_layers
from wdlab.cifar10.summary import FINAL_KEYS, gain_text, validation_choice
from wdlab.errors import StageInputError
from wdlab.files import RunFolder, read_table, write_json
from wdlab.results import (
    fmt_lambda,
    last_epochs,
    markdown_table,
    pm,
    pm_percent,
    seed_summary,
    separated,
    stats_of,
)
from wdlab.settings import CifarTrain, Settings
from wdlab.tracking import Tracker

NETS = {"resnet": "ResNet (BatchNorm)", "plain": "Plain CNN"}
MADE_BY = {"resnet": "train_cifar10@l2", "plain": "train_cifar10_plain"}
LAYER = "layer_w_norm."  # a layer's final ‖W‖ in the summaries and metrics: layer_w_norm.<layer>


@dataclass(frozen=True)
class Grid:
    """One net's L2 grid over seeds: final rows per (λ, seed), their summary per λ, and which layers BatchNorm
    follows."""

    net: str
    finals: pd.DataFrame  # one row per (λ, seed): FINAL_KEYS, each layer's final ‖W‖, epochs_run, diverged
    summary: pd.DataFrame  # per λ: mean, std and 95 % interval over seeds of each (seed_summary)
    layers: list[str]  # input → output
    invariant: list[str]  # the scale-invariant ones
    record: Path  # the training stage's run record (its MLflow run)


def main(settings: Settings, args: argparse.Namespace) -> None:
    study = settings.cifar10
    grids = {
        "resnet": read_grid("resnet", args.resnet, study.strengths.l2, settings),
        "plain": read_grid("plain", args.plain, study.plain.l2, settings),
    }
    plain = grid_metrics(grids["plain"], len(study.seeds))
    write_json(args.metrics, plain)
    figures.set_theme()
    pngs = [
        plot_accuracy_and_gap(grids, args.figures / "accuracy_gap_vs_lambda.png"),
        plot_layer_norms(grids, args.figures / "layer_norms_vs_lambda.png"),
    ]
    page = render_page(grids, plain["chosen_by_validation"], settings, figures.relative_to_page(pngs, args.page))
    records = {MADE_BY[net]: grid.record for net, grid in grids.items()}
    tracker = Tracker(settings.tracking, settings.tracking.experiment_cifar10)
    figures.publish(args.page, page, pngs, tracker, records, folder="architectures")


def read_grid(net: str, root: Path, strengths: tuple[float, ...], settings: Settings) -> Grid:
    """A net's grid folder as final rows and their summary; a grid that does not match the params is refused."""
    folder, made_by = RunFolder(root), MADE_BY[net]
    history = read_table(folder.history, made_by, required=("seed", "lambda", "epoch", "diverged", *FINAL_KEYS))
    norms = read_table(folder.layer_norms, made_by, required=("seed", "lambda", "epoch", "layer", "norm"))
    if set(history["lambda"]) != set(strengths) or set(history["seed"]) != set(settings.cifar10.seeds):
        raise StageInputError(
            f"{folder.history} does not hold the λ grid and seeds of params.yaml: run `dvc repro {made_by}`"
        )
    finals = last_epochs(history)
    final_norms = norms.merge(finals[["lambda", "seed", "epochs_run"]], on=["lambda", "seed"])
    final_norms = final_norms[final_norms["epoch"] == final_norms["epochs_run"]]
    wide = final_norms.pivot_table(index=["lambda", "seed"], columns="layer", values="norm").add_prefix(LAYER)
    finals = finals.merge(wide.reset_index(), on=["lambda", "seed"])
    layers = list(dict.fromkeys(norms["layer"]))  # as recorded: input → output
    summary = seed_summary(finals, [*FINAL_KEYS, *(LAYER + layer for layer in layers)])
    summary["epochs_run"] = finals.groupby("lambda")["epochs_run"].min().to_numpy()
    invariant = scale_invariant_layers(make_net(net_shape(settings.cifar10, net)))
    return Grid(net, finals, summary, layers, invariant, folder.record)


# ── the metrics ────────────────────────────────────────────────────────────────────────────────────


def grid_metrics(grid: Grid, seeds: int) -> dict:
    """The plain grid in metrics/cifar10.json's layout (so the same regression rules and invariants check it): per λ
    each final metric's and each layer's ‖W‖ mean, std and 95 % interval over seeds; the λ validation picks, with its
    gain over λ = 0."""
    return {
        "seeds": seeds,
        "architecture": grid.net,
        "regularizer": "l2",
        "grid": {
            f"lambda_{row['lambda']:g}": {"diverged": int(row["diverged"]), "epochs_run": int(row["epochs_run"])}
            | {key: stats_of(row, key) for key in FINAL_KEYS}
            | {"layer_w_norm": {layer: stats_of(row, LAYER + layer) for layer in grid.layers}}
            for row in grid.summary.to_dict("records")
        },
        "chosen_by_validation": validation_choice(grid.summary, grid.finals),
    }


# ── figures ────────────────────────────────────────────────────────────────────────────────────────


def both(grids: Mapping[str, Grid]) -> pd.DataFrame:
    """Both nets' final rows in one long table, `net` naming each; diverged runs left out."""
    return pd.concat(
        [grid.finals[~grid.finals["diverged"].astype(bool)].assign(net=NETS[net]) for net, grid in grids.items()],
        ignore_index=True,
    )


def plot_accuracy_and_gap(grids: Mapping[str, Grid], path: Path) -> Path:
    long = both(grids)
    long = long.assign(test=100 * long["test_accuracy"], gap=100 * long["gap_accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, column, label in (
        (axes[0], "test", "test accuracy (%)"),
        (axes[1], "gap", "train − test accuracy (points)"),
    ):
        figures.curves_vs_strength(ax, long, column, "net")
        figures.lambda_axis(ax, long["lambda"])
        ax.set(xlabel="weight decay λ", ylabel=label)
    axes[1].get_legend().remove()
    fig.suptitle(f"{gap_title(grids)}\n({figures.band_note(long)})")
    return figures.save(fig, path)


def gap_title(grids: Mapping[str, Grid]) -> str:
    parts = []
    for net, grid in grids.items():
        runs = finished(grid)
        if len(runs) >= 2:
            first, last = runs.iloc[0], runs.iloc[-1]
            parts.append(
                f"{NETS[net]}: gap {100 * first['gap_accuracy_mean']:.0f} → {100 * last['gap_accuracy_mean']:.0f} "
                f"points at λ = {fmt_lambda(last['lambda'])}"
            )
    return "; ".join(parts) or "Generalisation gap against λ"


def plot_layer_norms(grids: Mapping[str, Grid], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(grids), figsize=(8 * len(grids), 4.8), squeeze=False)
    for ax, (net, grid) in zip(axes[0], grids.items()):
        finals = grid.finals[~grid.finals["diverged"].astype(bool)]
        long = finals.melt(
            id_vars=["lambda", "seed"], value_vars=[LAYER + layer for layer in grid.layers], var_name="layer"
        )
        long["layer"] = long["layer"].str.removeprefix(LAYER)
        long["BatchNorm after it"] = long["layer"].isin(grid.invariant).map({True: "yes: scale-invariant", False: "no"})
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


# ── the page ───────────────────────────────────────────────────────────────────────────────────────


def finished(grid: Grid) -> pd.DataFrame:
    """Per λ, in order, the strengths whose every seed finished (a diverged strength has no final numbers)."""
    runs = grid.summary[grid.summary["diverged"] == 0].dropna(subset=["test_accuracy_mean"])
    return runs.sort_values("lambda").reset_index(drop=True)


def shrink(grid: Grid, layers: list[str]) -> tuple[float, float] | None:
    """The least and most of λ = 0's ‖W‖ that the largest finished λ leaves `layers` (mean over seeds)."""
    runs = finished(grid)
    if len(runs) < 2 or runs.iloc[0]["lambda"] != 0 or not layers:
        return None
    first, last = runs.iloc[0], runs.iloc[-1]
    ratios = [last[f"{LAYER}{layer}_mean"] / first[f"{LAYER}{layer}_mean"] for layer in layers]
    return min(ratios), max(ratios)


def span(ratios: tuple[float, float], form: str = "{:.0%}") -> str:
    low, high = (form.format(v) for v in ratios)
    return low if low == high else f"{low}–{high}"


def net_finding(grid: Grid) -> str:
    """What λ does to one net, read off its grid: ‖W‖ per layer, the gap and test accuracy from λ = 0 to the largest."""
    runs = finished(grid)
    if len(runs) < 2 or runs.iloc[0]["lambda"] != 0:
        return f"- **{NETS[grid.net]}**: too few finished strengths (λ = 0 and one more) to compare."
    first, last = runs.iloc[0], runs.iloc[-1]
    at = f"λ = {fmt_lambda(last['lambda'])}"
    gap = {k: stats_of(row, "gap_accuracy") for k, row in (("first", first), ("last", last))}
    test = {k: stats_of(row, "test_accuracy") for k, row in (("first", first), ("last", last))}
    gap_trend = "falls" if last["gap_accuracy_mean"] < first["gap_accuracy_mean"] else "rises"
    verdict = separated(gap["first"], gap["last"])
    beyond = {True: " (beyond the seed spread: the 95 % intervals do not overlap)", False: " (within the seed spread)"}
    free = [layer for layer in grid.layers if layer not in grid.invariant]
    text = f"- **{NETS[grid.net]}**: from λ = 0 to {at}, "
    if grid.invariant:
        invariant, other = shrink(grid, grid.invariant), shrink(grid, free)
        text += (
            f"the {len(grid.invariant)} scale-invariant convs' ‖W‖ fall to {span(invariant)} of λ = 0's, so their "
            f"effective learning rate η/‖W‖² grows {span((1 / invariant[1] ** 2, 1 / invariant[0] ** 2), '{:.1f}')}×"
            + (f"; the rest ({', '.join(free)}) to {span(other)}" if other else "")
        )
    else:
        text += f"‖W‖ of every layer falls to {span(shrink(grid, grid.layers))} of λ = 0's"
    return text + (
        f". The generalisation gap {gap_trend} from {pm(_points(gap['first']), '.1f')} to "
        f"{pm(_points(gap['last']), '.1f')} points{beyond.get(verdict, '')}, with train accuracy "
        f"{pm_percent(stats_of(first, 'train_accuracy'))} → {pm_percent(stats_of(last, 'train_accuracy'))} and test "
        f"accuracy {pm_percent(test['first'])} → {pm_percent(test['last'])}."
    )


def _points(summary: Mapping[str, float | None]) -> dict[str, float | None]:
    return {key: None if value is None else 100 * value for key, value in summary.items()}


def contrast(grids: Mapping[str, Grid]) -> str:
    """The two mechanisms side by side, in numbers: how much of the gap λ removes per halving of ‖W‖ in each net."""
    plain, resnet = grids["plain"], grids["resnet"]
    sentences = [
        "In the plain CNN every weight scales what follows it, so shrinking ‖W‖ shrinks the function: λ is the "
        "classic penalty on capacity, and the gap moves with the norms. In the ResNet a conv followed by BatchNorm "
        "computes the same function at any scale of its weights; shrinking them changes how far each step turns "
        "them (η/‖W‖²), not what the net can express, so the norms fall without limiting it."
    ]
    moved = {}
    for net, grid in (("plain", plain), ("resnet", resnet)):
        runs = finished(grid)
        if len(runs) >= 2 and runs.iloc[0]["lambda"] == 0:
            moved[net] = 100 * (runs.iloc[0]["gap_accuracy_mean"] - runs.iloc[-1]["gap_accuracy_mean"])
    if len(moved) == 2:
        sentences.append(
            f"Over their grids λ takes {moved['plain']:.1f} points off the plain CNN's gap and {moved['resnet']:.1f} "
            "off the ResNet's."
        )
    return " ".join(sentences)


def net_table(grids: Mapping[str, Grid]) -> str:
    rows = [
        {
            "net": NETS[net],
            "lambda": fmt_lambda(row["lambda"]),
            "train": pm_percent(stats_of(row, "train_accuracy")),
            "valid": pm_percent(stats_of(row, "valid_accuracy")),
            "test": pm_percent(stats_of(row, "test_accuracy")),
            "gap": pm(_points(stats_of(row, "gap_accuracy")), ".1f"),
            "w": pm(stats_of(row, "w_norm")),
            "diverged": int(row["diverged"]),
        }
        for net, grid in grids.items()
        for row in grid.summary.sort_values("lambda").to_dict("records")
    ]
    columns = {
        "net": "net",
        "lambda": "λ",
        "train": "train acc",
        "valid": "valid acc",
        "test": "test acc",
        "gap": "gap (points)",
        "w": "‖θ‖",
        "diverged": "seeds diverged",
    }
    return markdown_table(pd.DataFrame(rows), columns, {c: str for c in columns})


def layer_table(grid: Grid) -> str:
    rows = [
        {"layer": layer, "invariant": "yes" if layer in grid.invariant else "no"}
        | {fmt_lambda(row["lambda"]): pm(stats_of(row, LAYER + layer)) for row in grid.summary.to_dict("records")}
        for layer in grid.layers
    ]
    strengths = [fmt_lambda(v) for v in grid.summary["lambda"]]
    columns = {"layer": "layer", "invariant": "scale-invariant"} | {s: f"λ = {s}" for s in strengths}
    return markdown_table(pd.DataFrame(rows), columns, {c: str for c in columns})


def recipe(t: CifarTrain, shape: Mapping[str, object]) -> str:
    """A net's size and training recipe, in a line."""
    size = ", ".join(f"{key} {value}" for key, value in shape.items() if key != "architecture")
    momentum = f"momentum {t.momentum:g}{' (Nesterov)' if t.nesterov else ''}" if t.momentum else "no momentum"
    return f"{size}; SGD lr {t.lr:g}, {momentum}, {t.schedule} schedule, batch {t.batch_size}, {t.epochs} epochs"


def render_page(grids: Mapping[str, Grid], chosen: dict | None, settings: Settings, links: list[str]) -> str:
    """The page; `chosen` is the plain grid's validation choice as its metrics record it."""
    study = settings.cifar10
    seeds = len(study.seeds)
    chosen_line = ""
    if chosen is not None:
        gain = chosen.get("test_accuracy_gain")
        paired = f" ({gain_text(gain)} over λ = 0, seed by seed)" if gain and gain["ci_low"] is not None else ""
        chosen_line = (
            f"Validation accuracy picks λ = {fmt_lambda(chosen['lambda'])} for the plain CNN: test accuracy "
            f"{pm_percent(chosen['test_accuracy'])}{paired} (the ResNet's pick: [cifar10.md](cifar10.md))."
        )
    return "\n".join(
        [
            "# Weight decay in a plain CNN and in a BatchNorm ResNet (CIFAR-10)",
            "",
            f"_The same images (`cifar10.data`) and seeds ({', '.join(map(str, study.seeds))}) for both nets, L2 "
            f"(SGD + λ·w in the gradient) on conv and linear weights only. ResNet: "
            f"{recipe(study.train, net_shape(study, 'resnet'))}. Plain CNN (the reference's, without "
            f"normalisation: 5×5 conv → ReLU → pool, twice, then linear → ReLU → linear): "
            f"{recipe(study.plain.train, net_shape(study, 'plain'))}. Numbers are means ± std over {seeds} "
            "seed(s); figures show the mean with its 95 % band._",
            "",
            "## Finding",
            "",
            net_finding(grids["plain"]),
            net_finding(grids["resnet"]),
            "",
            contrast(grids),
            "",
            chosen_line,
            "",
            "## Figures",
            "",
            *[f"![{Path(link).stem}]({link})" for link in links],
            "",
            "## Both nets per λ",
            "",
            net_table(grids),
            "",
            "Gap = train − test accuracy in percentage points, on every image of both splits in eval mode. ‖θ‖ is the "
            "norm of all parameters.",
            "",
            "## ‖W‖ per layer (input → output)",
            "",
            "### Plain CNN",
            "",
            layer_table(grids["plain"]),
            "",
            "### ResNet",
            "",
            layer_table(grids["resnet"]),
            "",
            "_Generated by the `compare_architectures` stage of dvc.yaml; rerun `dvc repro` to refresh._",
            "",
        ]
    )


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(
        __doc__,
        "python -m stages.compare_architectures",
        {
            "resnet": "the ResNet's L2 grid folder (train_cifar10@l2): history, layer norms, run record",
            "plain": "the plain CNN's L2 grid folder (train_cifar10_plain): the same files",
            "metrics": "the plain grid's DVC metrics file (output)",
            "page": "the comparison page (output)",
            "figures": "the folder of its figures (output)",
        },
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
