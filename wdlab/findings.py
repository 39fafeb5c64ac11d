"""Findings as data: each claim a page makes, computed as a record with its numbers, its interval and a verdict, so
the page's sentence is chosen by the verdict and the regression check guards the claim like any metric.

Every comparison is paired over the seeds both sides share: a seed draws its own data, so the difference per seed
removes the spread between datasets, which an unpaired comparison of two means leaves in."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import pandas as pd

from wdlab.results import json_record, stats

# Verdicts of a paired comparison, `after` against `before`, on a metric whose `better` direction is known.
BETTER = "better"  # the 95 % t-interval of the paired difference lies on the better side of 0
WORSE = "worse"  # it lies on the worse side
TIED = "indistinguishable"  # it contains 0: these seeds cannot tell the two apart
SAME = "identical"  # every paired difference is at rounding level: the same computation
ONE_SEED = "one seed"  # no interval exists

# Differences this small relative to the compared values are float32 rounding (decoupled decay and L2 are one update
# for plain SGD): below it two models are the same, whatever the t-interval of their rounding says.
ROUNDING = 1e-5

# The grid is extended only where SGD's decay factor (1 − ηλ) per step stays well inside (0, 1): at ηλ ≥ 1 it flips
# w's sign every step (ηλ = 3: w ← −2w, a certain divergence), and near 1 the step leaves the small-step regime.
STABLE_ETA_LAMBDA = 0.5

Edge = Literal["smallest", "largest", "inside", "none"]


def paired(after: pd.Series, before: pd.Series, better: Literal["lower", "higher"] = "lower") -> dict:
    """`after` − `before` per shared seed (both indexed by seed; NaN: a diverged run, left out): the mean difference,
    its std and 95 % t-interval, the ratio of the two means and the verdict."""
    both = pd.concat({"after": after, "before": before}, axis=1, join="inner").dropna()
    diff = both["after"] - both["before"]
    summary = stats(diff)
    scale = both.abs().to_numpy().max() if len(both) else 0.0
    ratio = both["after"].mean() / both["before"].mean() if len(both) and both["before"].mean() else math.nan
    return json_record({"n": len(both)} | summary | {"ratio": ratio, "verdict": verdict(diff, summary, scale, better)})


def verdict(diff: pd.Series, summary: Mapping[str, float], scale: float, better: str) -> str:
    if len(diff) and (diff.abs() <= ROUNDING * scale).all():
        return SAME
    if len(diff) < 2:
        return ONE_SEED
    low, high = summary["ci_low"], summary["ci_high"]
    gain_low, gain_high = (-high, -low) if better == "lower" else (low, high)  # a loss improves by falling
    if gain_low > 0:
        return BETTER
    if gain_high < 0:
        return WORSE
    return TIED


def grid_edge(choice: float | None, grid: Sequence[float]) -> dict:
    """Whether a chosen strength is its grid's smallest or largest: an optimum there may lie beyond the grid."""
    edge: Edge = "none"
    if choice is not None:
        edge = "largest" if choice == max(grid) else "smallest" if choice == min(grid) else "inside"
    return {"strength": choice, "edge": edge}


def within_band(values: pd.Series, low: float, high: float) -> dict:
    """The seeds' values against a published band: the mean, the range, and how many seeds fall inside it."""
    inside = values.between(low, high)
    return json_record(
        {
            "mean": values.mean(),
            "min": values.min(),
            "max": values.max(),
            "low": low,
            "high": high,
            "seeds": len(values),
            "seeds_inside": int(inside.sum()),
            "mean_inside": bool(low <= values.mean() <= high),
            "all_inside": bool(inside.all()),
        }
    )


def extension(
    edge: Edge,
    grid: Sequence[float],
    decay_rates: Mapping[float, float | None],
    lr: float,
    exact_at: Mapping[float, pd.Series],
    chosen: pd.Series,
) -> dict:
    """Whether to extend a grid whose choice sits on its edge: each candidate strength beyond it with ηλ (λ of the
    decay factor its step applies: `decay_rates`, None where the step has none) and its exact optimum's test loss
    paired against SGD at the choice (`exact_at`, per seed). A candidate is advised only when its step is stable and
    its exact optimum is better than SGD at the choice: otherwise nothing beyond the grid is there to find."""
    candidates = {}
    for strength, exact in exact_at.items():
        rate = decay_rates.get(strength)
        eta_lambda = None if rate is None else lr * rate
        candidates[f"lambda_{strength:g}"] = {
            "strength": strength,
            "eta_lambda": eta_lambda,
            "stable": eta_lambda is None or eta_lambda <= STABLE_ETA_LAMBDA,
            "exact_test_loss": json_record(stats(exact)),
            "gain": paired(exact, chosen),
        }
    advised = [c["strength"] for c in candidates.values() if c["stable"] and c["gain"]["verdict"] == BETTER]
    return {
        "edge": edge,
        "candidates": candidates,
        "advised": ", ".join(f"{v:g}" for v in advised),  # a string: the check compares it exactly
        "grid": ", ".join(f"{v:g}" for v in grid),
        "verdict": "extend" if advised else "keep",
    }


def beyond(edge: Edge, grid: Sequence[float], is_rate: bool) -> list[float]:
    """The strengths one step past a grid's edge (×3 and ×10 above the largest, ÷10 below a smallest > 0); a rate in
    [0, 1) has nothing above its largest."""
    if edge == "largest" and not is_rate:
        return [3 * max(grid), 10 * max(grid)]
    if edge == "smallest" and min(grid) > 0:
        return [min(grid) / 10]
    return []
