"""Evaluate the CIFAR-10 study: final accuracy, loss, generalisation gap and ‖θ‖ per λ, and the λ validation picks."""

from __future__ import annotations

import argparse
import logging
import math

import pandas as pd

from stages import paths
from stages.common import run_stage, stage_parser
from stages.files import StageInputError, load_tensors, write_csv, write_json
from stages.settings import Settings

log = logging.getLogger("wd-lab.evaluate_cifar10")

# What the metrics file keeps of each run's last epoch.
FINAL_KEYS = (
    "train_accuracy", "valid_accuracy", "test_accuracy", "train_loss", "valid_loss", "test_loss",
    "gap_accuracy", "gap_loss", "w_norm",
)


def main(settings: Settings, args: argparse.Namespace) -> None:
    headline = final_rows("headline")
    grid = final_rows("grid")
    if set(grid["lambda"]) != set(settings.cifar10.lambda_grid):
        raise StageInputError(f"{paths.cifar_history('grid')} does not match cifar10.lambda_grid: run `dvc repro train_cifar10@grid`")
    chosen = pick_lambda(grid)

    write_csv(paths.CIFAR_BY_LAMBDA, csv_records(grid))
    write_json(paths.CIFAR_METRICS, metrics(headline.iloc[0], grid, chosen))
    row = headline.iloc[0]
    log.info("headline λ=%g: test accuracy %.3f, gap %+.3f", row["lambda"], row["test_accuracy"], row["gap_accuracy"])
    if chosen is not None:
        log.info("validation accuracy picks λ=%g (test accuracy %.3f)", chosen, grid.set_index("lambda").loc[chosen, "test_accuracy"])


def final_rows(run: str) -> pd.DataFrame:
    """The last recorded epoch of every λ of a training run, with its divergence record."""
    history_path = paths.cifar_history(run)
    made_by = f"train_cifar10@{run}"
    if not history_path.is_file():
        raise StageInputError(f"{history_path} is missing: run `dvc repro {made_by}` to make it again")
    history = pd.read_csv(history_path)
    missing = [key for key in ("lambda", "epoch", *FINAL_KEYS) if key not in history.columns]
    if missing:
        raise StageInputError(f"{history_path} lacks {', '.join(missing)}: run `dvc repro {made_by}` to make it again")
    checkpoint = load_tensors(paths.cifar_model(run), made_by=made_by, required=("lambdas", "diverged_epoch"))
    diverged = dict(zip(checkpoint["lambdas"].tolist(), checkpoint["diverged_epoch"].tolist()))
    # tail(1), not last(): last() would skip a diverged run's NaN and report an earlier epoch's value.
    final = history.sort_values(["lambda", "epoch"]).groupby("lambda").tail(1).reset_index(drop=True)
    final = final.rename(columns={"epoch": "epochs_run"})
    final["diverged"] = [diverged.get(lam, -1) >= 0 for lam in final["lambda"]]
    return final


def pick_lambda(grid: pd.DataFrame) -> float | None:
    """The λ with the highest validation accuracy (held-out training images); diverged runs never win."""
    usable = grid[~grid["diverged"] & grid["valid_accuracy"].notna()]
    if usable.empty:
        return None
    return float(usable.sort_values(["valid_accuracy", "lambda"], ascending=[False, True])["lambda"].iloc[0])


def metrics(headline: pd.Series, grid: pd.DataFrame, chosen: float | None) -> dict:
    """The DVC metrics file: the headline run, every λ of the grid, and the λ that validation picks."""
    by_lambda = grid.set_index("lambda")
    finite = grid[~grid["diverged"]]
    top_test = finite.sort_values(["test_accuracy", "lambda"], ascending=[False, True]).head(1)
    return {
        "headline": {"lambda": float(headline["lambda"])} | _summary(headline),
        "grid": {f"lambda_{lam:g}": _summary(row) for lam, row in by_lambda.iterrows()},
        "chosen_by_validation": None if chosen is None else {
            "lambda": chosen,
            "valid_accuracy": _number(by_lambda.loc[chosen, "valid_accuracy"]),
            "test_accuracy": _number(by_lambda.loc[chosen, "test_accuracy"]),
        },
        # Descriptive only: a λ chosen by test accuracy would make that test accuracy an optimistic estimate.
        "highest_test_accuracy": None if top_test.empty else {
            "lambda": float(top_test["lambda"].iloc[0]),
            "test_accuracy": _number(top_test["test_accuracy"].iloc[0]),
        },
    }


def _summary(row: pd.Series) -> dict:
    return {key: _number(row[key]) for key in FINAL_KEYS} | {
        "epochs_run": int(row["epochs_run"]),
        "diverged": bool(row["diverged"]),
    }


def _number(value: float) -> float | None:
    """JSON-friendly: NaN/inf of a diverged run become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def csv_records(grid: pd.DataFrame) -> list[dict]:
    """One row per λ for `dvc plots`; a diverged run's non-finite values are left empty."""
    columns = ["lambda", *FINAL_KEYS, "epochs_run", "diverged"]
    return [
        {key: (value if isinstance(value, (bool, str)) or math.isfinite(value) else None) for key, value in row.items()}
        for row in grid[columns].to_dict("records")
    ]


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__, "python -m stages.evaluate_cifar10"))
