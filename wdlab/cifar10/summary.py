"""What the CIFAR-10 evaluations keep of each run and how they choose a strength, shared by the stages that read the
grids' histories (evaluate_images, compare_architectures). Needs pandas, not torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wdlab.results import best_lambda, json_record, stats, stats_of

if TYPE_CHECKING:
    import pandas as pd

# What the metrics keep of each run's last epoch.
FINAL_KEYS = (
    "train_accuracy",
    "valid_accuracy",
    "test_accuracy",
    "train_loss",
    "valid_loss",
    "test_loss",
    "gap_accuracy",
    "gap_loss",
    "w_norm",
    "zero_fraction",
)


def paired_gain(finals: pd.DataFrame, metric: str, strength: float, base: float = 0.0) -> dict | None:
    """`metric` at `strength` minus `metric` at `base`, seed by seed: its mean, std and 95 % t-interval over the seeds
    where neither run diverged. A seed draws the same initial weights and batch order at every strength, so the
    pairs share that part of the noise and the difference is measured more tightly than by two unpaired means; None
    when no seed has both runs."""
    finished = finals[~finals["diverged"].astype(bool)]
    wide = finished.pivot_table(index="seed", columns="lambda", values=metric)
    if strength not in wide.columns or base not in wide.columns:
        return None
    difference = (wide[strength] - wide[base]).dropna()
    return json_record(stats(difference)) if len(difference) else None


def validation_choice(summary: pd.DataFrame, finals: pd.DataFrame) -> dict | None:
    """The strength with the highest mean validation accuracy (None when every one diverged): its validation and
    test accuracy over seeds and, when the grid has λ = 0 and chose another, its test-accuracy gain over λ = 0 seed
    by seed (`test_accuracy_gain`)."""
    chosen = best_lambda(summary, "valid_accuracy_mean", higher_is_better=True)
    if chosen is None:
        return None
    row = summary.set_index("lambda", drop=False).loc[chosen]
    record = {
        "lambda": chosen,
        "valid_accuracy": stats_of(row, "valid_accuracy"),
        "test_accuracy": stats_of(row, "test_accuracy"),
    }
    gain = paired_gain(finals, "test_accuracy", chosen) if chosen != 0 else None
    return record | ({"test_accuracy_gain": gain} if gain else {})


def gain_text(gain: dict) -> str:
    """A paired gain in accuracy as the pages say it: `+1.2 points, 95 % interval +0.1 to +2.3`."""
    return (
        f"{100 * gain['mean']:+.1f} points, 95 % interval {100 * gain['ci_low']:+.1f} to {100 * gain['ci_high']:+.1f}"
    )
