"""The architecture axis of the CIFAR-10 study as data: each net's L2 grid read from its training stage's folder, the
plain grid's metrics, and every claim the architectures page makes as a record (wdlab/findings.py) — the validation
choice's paired gain, the generalisation gap, how far λ shrinks each layer, whether it limits what the net fits, and
which layers BatchNorm makes scale-invariant — plus the page's tables. The page's template words them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wdlab import findings, pages
from wdlab.cifar10.model import make_net, net_shape, scale_invariant_layers
from wdlab.cifar10.summary import FINAL_KEYS, validation_choice
from wdlab.errors import StageInputError
from wdlab.files import RunFolder, read_table
from wdlab.results import (
    by_strength,
    fmt_lambda,
    json_record,
    last_epochs,
    pm,
    pm_percent,
    seed_summary,
    stats,
    stats_of,
)
from wdlab.settings import ImageStudy
from wdlab.stage import image_stage

NETS = {"resnet": "ResNet (BatchNorm)", "plain": "Plain CNN"}


def made_by(net: str, study: str) -> str:
    """The stage that trains `net`'s L2 grid of image study `study`: train_images@<study>-l2 or
    train_images_plain@<study>."""
    return image_stage("train_images", study, "l2") if net == "resnet" else image_stage("train_images_plain", study)


LAYER = "layer_w_norm."  # a layer's final ‖W‖ in the final rows and their summary: layer_w_norm.<layer>


@dataclass(frozen=True)
class Grid:
    """One net's L2 grid over seeds: final rows per (λ, seed), their summary per λ, and which layers BatchNorm
    follows."""

    net: str
    finals: pd.DataFrame  # one row per (λ, seed): FINAL_KEYS, each layer's final ‖W‖, epochs_run, diverged
    summary: pd.DataFrame  # per λ: mean, std and 95 % interval over seeds of each (seed_summary)
    layers: list[str]  # input → output
    invariant: set[str]  # the scale-invariant ones
    record: Path  # the training stage's run record (its MLflow run)


def read_grid(net: str, root: Path, strengths: tuple[float, ...], study: ImageStudy, made_by: str) -> Grid:
    """A net's grid folder (written by stage `made_by`) as final rows and their summary; a grid that does not match
    the params is refused."""
    folder = RunFolder(root)
    history = read_table(folder.history, made_by, required=("seed", "lambda", "epoch", "diverged", *FINAL_KEYS))
    norms = read_table(folder.layer_norms, made_by, required=("seed", "lambda", "epoch", "layer", "norm"))
    if set(history["lambda"]) != set(strengths) or set(history["seed"]) != set(study.seeds):
        raise StageInputError(
            f"{folder.history} does not hold the λ grid and seeds of params.yaml: run `dvc repro {made_by}`"
        )
    finals = last_epochs(history)
    final_norms = norms.merge(finals[["lambda", "seed", "epochs_run"]], on=["lambda", "seed"])
    final_norms = final_norms[final_norms["epoch"] == final_norms["epochs_run"]]
    wide = final_norms.pivot_table(index=["lambda", "seed"], columns="layer", values="norm").add_prefix(LAYER)
    finals = finals.merge(wide.reset_index(), on=["lambda", "seed"])
    layers = list(dict.fromkeys(norms["layer"]))  # as recorded: input → output
    invariant = scale_invariant_layers(make_net(net_shape(study, net)))
    return summarise(net, finals, layers, invariant, folder.record)


def summarise(net: str, finals: pd.DataFrame, layers: list[str], invariant: set[str], record: Path) -> Grid:
    """A net's grid from its final rows (one per λ and seed): their summary per λ over seeds."""
    summary = seed_summary(finals, [*FINAL_KEYS, *(LAYER + layer for layer in layers)])
    summary["epochs_run"] = finals.groupby("lambda")["epochs_run"].min().to_numpy()
    return Grid(net, finals, summary, layers, invariant, record)


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


# ── the findings ───────────────────────────────────────────────────────────────────────────────────


def strongest_finished(grid: Grid) -> float | None:
    """The largest λ whose every seed finished (a diverged strength has no final numbers); None without λ = 0 or a
    finished λ > 0 to compare it with."""
    finished = grid.summary[(grid.summary["diverged"] == 0) & grid.summary["test_accuracy_mean"].notna()]
    strengths = sorted(finished["lambda"])
    return strengths[-1] if len(strengths) >= 2 and strengths[0] == 0 else None


def net_findings(grid: Grid, strengths: tuple[float, ...]) -> dict:
    """One net's claims, each paired over the seeds λ = 0 and the other strength share: the validation choice (its
    grid edge, its test-accuracy gain, the gap there), and from λ = 0 to the strongest finished λ, how far each layer's
    ‖W‖ and the total ‖θ‖ shrink and whether train accuracy falls: λ limiting what the net can fit."""
    runs = finished(grid)

    def at(strength: float, column: str) -> pd.Series:
        return runs[runs["lambda"] == strength].set_index("seed")[column]

    choice = validation_choice(grid.summary, grid.finals)
    chosen = None if choice is None else choice["lambda"]
    record: dict = {
        "chosen": findings.grid_edge(chosen, strengths),
        "scores": by_strength(grid.summary, ("valid_accuracy", "test_accuracy")),  # what the choice was made on
        "scale_invariant": ", ".join(layer for layer in grid.layers if layer in grid.invariant),  # a name: exact
        "invariant_layers": len(grid.invariant),
    }
    if 0.0 not in set(runs["lambda"]):
        return record
    if chosen is not None:
        record["gain"] = findings.paired(at(chosen, "test_accuracy"), at(0.0, "test_accuracy"), better="higher")
        record["gap"] = {
            "at_zero": json_record(stats(at(0.0, "gap_accuracy"))),
            "at_chosen": json_record(stats(at(chosen, "gap_accuracy"))),
            "change": findings.paired(at(chosen, "gap_accuracy"), at(0.0, "gap_accuracy")),  # a gap improves by falling
        }
    if (strongest := strongest_finished(grid)) is not None:
        record["capacity"] = capacity(at, strongest)
        record["norms"] = {"strength": strongest, "total": findings.paired(at(strongest, "w_norm"), at(0.0, "w_norm"))}
        record["norms"]["layers"] = {
            layer: shrink(at(strongest, LAYER + layer), at(0.0, LAYER + layer), layer in grid.invariant)
            for layer in grid.layers
        }
    return record


def capacity(at: Callable[[float, str], pd.Series], strongest: float) -> dict:
    """Whether λ limits what the net fits: train accuracy at the strongest finished λ against λ = 0, paired; a fall
    (the verdict `worse`) beyond the seed spread is the classic penalty on capacity."""
    train = findings.paired(at(strongest, "train_accuracy"), at(0.0, "train_accuracy"), better="higher")
    return {
        "strength": strongest,
        "train_at_zero": json_record(stats(at(0.0, "train_accuracy"))),
        "train_at_strongest": json_record(stats(at(strongest, "train_accuracy"))),
        "train_accuracy": train,
        "limits": train["verdict"] == findings.WORSE,
    }


def shrink(after: pd.Series, before: pd.Series, invariant: bool) -> dict:
    """A layer's ‖W‖ at a strength against λ = 0, paired (`better`: it shrinks); for a weight BatchNorm follows, how
    much its effective learning rate grows."""
    record = findings.paired(after, before) | {"scale_invariant": invariant}
    if invariant and record["ratio"]:
        record["effective_lr_growth"] = 1 / record["ratio"] ** 2  # η_eff = η/‖W‖²: shrinking ‖W‖ by r grows it 1/r²
    return record


def claims(grids: Mapping[str, Grid], strengths: Mapping[str, tuple[float, ...]]) -> dict:
    """Every claim of the architectures page, per net, and the contrast between them: which nets' train accuracy
    λ lowers (it limits their capacity) and which it leaves."""
    nets = {net: net_findings(grid, strengths[net]) for net, grid in grids.items()}
    verdicts = {
        net: record["capacity"]["train_accuracy"]["verdict"] for net, record in nets.items() if "capacity" in record
    }
    limited = [net for net, record in nets.items() if record.get("capacity", {}).get("limits")]
    unjudged = [net for net, verdict in verdicts.items() if verdict == findings.ONE_SEED]  # no interval to judge by
    return nets | {
        "contrast": {
            "compared": ", ".join(verdicts),  # names: the check compares them exactly
            "unjudged": ", ".join(unjudged),
            "capacity_limited": ", ".join(limited),
            "mechanisms_differ": len(verdicts) == 2 and not unjudged and len(limited) == 1,
        }
    }


# ── the figures' data and the page's tables ───────────────────────────────────────────────────────────────────────────


def finished_rows(grids: Mapping[str, Grid]) -> pd.DataFrame:
    """Both nets' final rows in one long table, `net` naming each; diverged runs left out."""
    return pd.concat([finished(grid).assign(net=NETS[net]) for net, grid in grids.items()], ignore_index=True)


def layer_norms_long(grid: Grid) -> pd.DataFrame:
    """A net's final ‖W‖ per (λ, seed, layer), diverged runs left out, with whether BatchNorm follows the layer."""
    long = finished(grid).melt(
        id_vars=["lambda", "seed"], value_vars=[LAYER + layer for layer in grid.layers], var_name="layer"
    )
    long["layer"] = long["layer"].str.removeprefix(LAYER)
    long["BatchNorm after it"] = long["layer"].isin(grid.invariant).map({True: "yes: scale-invariant", False: "no"})
    return long


def finished(grid: Grid) -> pd.DataFrame:
    """A grid's final rows of the runs that did not diverge."""
    return grid.finals[~grid.finals["diverged"].astype(bool)]


def net_table(grids: Mapping[str, Grid]) -> str:
    """Both nets per λ: accuracies, the gap, ‖θ‖ and the seeds that diverged."""
    rows = [
        {
            "net": NETS[net],
            "λ": fmt_lambda(row["lambda"]),
            "train acc": pm_percent(stats_of(row, "train_accuracy")),
            "valid acc": pm_percent(stats_of(row, "valid_accuracy")),
            "test acc": pm_percent(stats_of(row, "test_accuracy")),
            "gap (points)": pm(points(stats_of(row, "gap_accuracy")), ".1f"),
            "‖θ‖": pm(stats_of(row, "w_norm")),
            "seeds diverged": str(int(row["diverged"])),
        }
        for net, grid in grids.items()
        for row in grid.summary.sort_values("lambda").to_dict("records")
    ]
    return pages.markdown(pd.DataFrame(rows), ("left",) + ("right",) * 7)


def layer_table(grid: Grid) -> str:
    """Each layer's final ‖W‖ per λ, and whether BatchNorm follows it."""
    per_lambda = grid.summary.to_dict("records")
    rows = [
        {"layer": layer, "scale-invariant": "yes" if layer in grid.invariant else "no"}
        | {f"λ = {fmt_lambda(row['lambda'])}": pm(stats_of(row, LAYER + layer)) for row in per_lambda}
        for layer in grid.layers
    ]
    return pages.markdown(pd.DataFrame(rows), ("left", "left") + ("right",) * len(grid.summary))


def points(summary: Mapping[str, float | None]) -> dict[str, float | None]:
    """An accuracy summary (a fraction) in percentage points."""
    return {key: None if value is None else 100 * value for key, value in summary.items()}
