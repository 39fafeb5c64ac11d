"""An image study's findings as records: each claim its page (reports/<study>.md) makes (the chosen strength
against λ = 0,
the grid's edge, λ = 0's overfit, accuracy against chance, and each decayed grid's rotational equilibrium per layer and
epoch), computed from the grids' outputs with wdlab.findings' records, so checks.yaml guards them and the page's
template (reports/templates/images.md.j2) only words them. Needs pandas and numpy, not torch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wdlab import findings
from wdlab.cifar10.schedule import step_lrs
from wdlab.equilibrium import Equilibrium
from wdlab.files import RunFolder, grid_folders, read_json, read_table
from wdlab.regularizers import REGISTRY, Regularizer
from wdlab.results import fmt_lambda, json_record, separated, stats
from wdlab.settings import ImageTrain, Settings

TOLERANCE = 0.2  # "at equilibrium": the measured angular update within 20 % of the prediction
LAST_EPOCHS = 3  # "the last epochs" of a run, where the schedule's lr is lowest
SAME_RATE = 1.5  # turning layers less than this many times as far per step as λ = 0: "about λ = 0's effective lr"
SETTLING_EFOLDS = 3  # a run with fewer e-folds than this cannot settle at θ*: e⁻³ ≈ 5 % of the start's distance left


# ── the angles the grids measured, beside the equilibrium ─────────────────────────────────────────


@dataclass
class Rotation:
    """One regulariser's grid: each scale-invariant layer's angular update per epoch, measured and predicted."""

    regularizer: str
    equilibria: dict[float, Equilibrium]  # per λ > 0
    angles: pd.DataFrame  # per (seed, λ, layer, epoch ≥ 1): angular_update (measured), predicted (NaN at λ = 0), norm
    efolds: dict[float, list[float]]  # per λ > 0 and epoch: the relaxation towards equilibrium so far, in e-folds
    layers: list[str]  # the scale-invariant layers, input to output
    steps: int  # optimiser steps in the run

    def ratios(self, strength: float) -> pd.Series:
        """Measured / predicted per (epoch, layer), both means over seeds."""
        rows = self.angles[self.angles["lambda"] == strength]
        means = rows.groupby(["epoch", "layer"])[["angular_update", "predicted"]].mean()
        return means["angular_update"] / means["predicted"]

    def summary(self, strength: float) -> pd.DataFrame:
        """Per epoch: the median over layers of measured / predicted, and its range over layers."""
        ratio = self.ratios(strength).groupby("epoch")
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


def decayed_grids(grids: Path, settings: Settings, study: str) -> dict[str, RunFolder]:
    """The grids of `study` whose strength is weight decay (l2 through SGD, decoupled through AdamW) with some
    λ > 0."""
    names = [
        name
        for name, strengths in settings.study(study).strengths.model_dump().items()
        if any(REGISTRY[name].weight_decay(s) > 0 for s in strengths)
    ]
    return grid_folders(grids, names)


def equilibrium_of(definition: Regularizer, strength: float, train: ImageTrain) -> Equilibrium:
    """The equilibrium of a regulariser's optimiser at strength λ: SGD (Nesterov as configured) or AdamW."""
    nesterov = definition.optimizer == "sgd" and train.nesterov and train.momentum > 0
    return Equilibrium(definition.optimizer, definition.weight_decay(strength), train.momentum, nesterov)


def rotation(regularizer: str, folder: RunFolder, train: ImageTrain, made_by: str) -> Rotation:
    """The grid's measured angular updates beside the equilibrium under the schedule's η_t: the prediction for an
    epoch is the mean over its steps of θ*(η_t), as the measurement is the mean over its steps of the angle;
    `made_by`: the stage that wrote the grid's folder."""
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
    # e-folds = Σ_t rate(η_t) up to each epoch's end: the distance to equilibrium has shrunk by e^(−Σ rate) there
    efolds = {s: eq.relaxation_rate(lrs).sum(axis=1).cumsum().tolist() for s, eq in equilibria.items()}
    return Rotation(regularizer, equilibria, angles, efolds, list(pd.unique(angles["layer"])), lrs.size)


def within(summary: pd.DataFrame) -> list[int]:
    """The epochs whose median layer is within TOLERANCE of the prediction: |measured / predicted − 1| ≤ 0.2."""
    return [int(e) for e in summary.index[(summary["median"] - 1).abs() <= TOLERANCE]]


def epoch_ranges(epochs: Sequence[int]) -> str:
    """[2, 3, 4, 7] → '2–4, 7'."""
    spans: list[list[int]] = []
    for epoch in epochs:
        if spans and epoch == spans[-1][1] + 1:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


# ── the records ───────────────────────────────────────────────────────────────────────────────────


def tidy(value: Any) -> Any:
    """A nested record for JSON: json_record's cleaning (NaN → None, numpy numbers → Python's) at every depth."""
    if isinstance(value, Mapping):
        return {key: tidy(item) for key, item in value.items()}
    return json_record({"value": value})["value"]


def per_seed(finals: pd.DataFrame, strength: float, metric: str) -> pd.Series:
    """`metric` at `strength` indexed by seed; NaN where the run diverged, so a paired record leaves it out."""
    rows = finals[finals["lambda"] == strength].set_index("seed")
    return rows[metric].where(~rows["diverged"].astype(bool))


def study(finals: pd.DataFrame, grid: Sequence[float], chosen: float | None, chance: float) -> dict:
    """The study regulariser's claims: the validation choice on the grid's edge or inside, its test-accuracy gain over
    λ = 0 seed by seed (and whether the two unpaired intervals already part), λ = 0's overfit (train − test accuracy,
    paired: `better` means train above test), the weakest λ against chance, the spread of test accuracy across the
    grid, and the gap's trend from the smallest to the largest λ that trained."""
    test = {s: per_seed(finals, s, "test_accuracy") for s in grid}
    means = pd.Series({s: values.mean() for s, values in test.items()}).dropna()
    trained = sorted(means.index)
    record: dict = {
        "edge": findings.grid_edge(chosen, grid),
        "diverged_strengths": ", ".join(fmt_lambda(s) for s in grid if test[s].isna().any()),  # names: checked exactly
    }
    if chosen is not None and chosen != 0 and 0.0 in trained:
        record["gain"] = findings.paired(test[chosen], test[0.0], better="higher") | {
            "unpaired_apart": separated(stats(test[chosen]), stats(test[0.0]))
        }
    if 0.0 in trained:
        record["overfit"] = findings.paired(per_seed(finals, 0.0, "train_accuracy"), test[0.0], better="higher")
    if trained:
        weakest = float(means.idxmin())
        level = pd.Series(chance, index=test[weakest].index)
        record["chance"] = {
            "level": chance,
            "weakest": weakest,
            "vs_chance": findings.paired(test[weakest], level, better="higher"),
        }
    if len(trained) >= 2:
        lowest, highest = float(means.idxmin()), float(means.idxmax())
        record["span"] = {
            "lowest": lowest,
            "highest": highest,
            "vs": findings.paired(test[highest], test[lowest], better="higher"),
        }
        first, last = trained[0], trained[-1]
        norms = pd.Series({s: per_seed(finals, s, "w_norm").mean() for s in trained})
        record["gap_trend"] = {
            "first": first,
            "last": last,
            "vs": findings.paired(
                per_seed(finals, last, "gap_accuracy"), per_seed(finals, first, "gap_accuracy"), better="lower"
            ),
            "w_norm_falls": bool(norms.is_monotonic_decreasing),
        }
    return tidy(record)


def equilibrium(rotation: Rotation, finals: pd.DataFrame) -> dict:
    """One decayed grid against its equilibrium: per λ > 0 the e-folds its run allows, per epoch the median layer's
    measured / predicted angle and its range, whether and when it comes within 20 %, per layer the ratio over the last
    epochs, and, where the grid has a λ = 0, how much further λ turns its layers per step than λ = 0 does, what that
    predicts for accuracy and the paired test-accuracy difference measured. `finals`: the grid's final rows."""
    first = next(iter(rotation.equilibria.values()), None)
    accuracy = {s: per_seed(finals, s, "test_accuracy") for s in sorted(finals["lambda"].unique())}
    has_zero = 0.0 in accuracy and accuracy[0.0].notna().any()
    record: dict = {
        "method": REGISTRY[rotation.regularizer].title,
        "formula": first.formula() if first else None,
        "steps": rotation.steps,
        "layers": len(rotation.layers),
        "has_zero": bool(has_zero),
        "settles": any(efolds[-1] >= SETTLING_EFOLDS for efolds in rotation.efolds.values()),
        "zero_accuracy": json_record(stats(accuracy[0.0])) if has_zero else None,
        "strengths": {},
    }
    for strength in sorted(rotation.equilibria):
        summary = rotation.summary(strength).dropna()
        if summary.empty:
            continue
        epochs = within(summary)
        closest = (summary["median"] - 1).abs().idxmin()
        last = summary["median"].iloc[-LAST_EPOCHS:].mean()
        layers = rotation.ratios(strength).dropna()
        late = layers[layers.index.get_level_values("epoch").isin(summary.index[-LAST_EPOCHS:])]
        entry = {
            "strength": strength,
            "efolds": rotation.efolds[strength][-1],  # the whole run's
            "reaches": bool(epochs),
            "epochs_within": epoch_ranges(epochs),
            "first_within": epochs[0] if epochs else None,
            "at_end": bool(abs(summary["median"].iloc[-1] - 1) <= TOLERANCE),
            "closest": {"epoch": int(closest)} | summary.loc[closest].to_dict(),
            "last_epochs": last,
            "lags": bool(last < 1 - TOLERANCE),  # η_t falls faster than ‖W‖ can follow
            "per_epoch": {
                f"epoch_{int(e)}": row
                | {"efolds": rotation.efolds[strength][int(e) - 1], "within": bool(abs(row["median"] - 1) <= TOLERANCE)}
                for e, row in summary.to_dict("index").items()
            },
            "per_layer": late.groupby("layer").mean().reindex(rotation.layers).dropna().to_dict(),
            "test_accuracy": json_record(stats(accuracy.get(strength, pd.Series(dtype=float)))),
        }
        speed = rotation.versus(strength)
        if has_zero and strength in accuracy and math.isfinite(speed):
            entry["versus_zero"] = {
                "speed": speed,
                "prediction": "same" if speed < SAME_RATE else "apart" if epochs else "faster",
                "vs": findings.paired(accuracy[strength], accuracy[0.0], better="higher"),
            }
        record["strengths"][f"lambda_{strength:g}"] = entry
    base = rotation.angles[rotation.angles["lambda"] == 0.0].groupby("epoch")["angular_update"].median()
    record["zero"] = (
        {
            "first_epoch": int(base.index[0]),
            "first_angle": float(base.iloc[0]),
            "last_epoch": int(base.index[-1]),
            "last_angle": float(base.iloc[-1]),
        }
        if len(base) > 1
        else None
    )
    return tidy(record)
