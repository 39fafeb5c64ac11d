"""Evaluate the CIFAR-10 study: final accuracy, loss, generalisation gap and ‖θ‖ per λ, and the λ validation picks."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from wdlab import stage
from wdlab.errors import StageInputError
from wdlab.files import read_table, write_csv, write_json
from wdlab.results import best_lambda, finite_or_none, json_record
from wdlab.settings import Settings

log = logging.getLogger("wd-lab.evaluate_cifar10")

# What the metrics file keeps of each run's last epoch.
FINAL_KEYS = (
    "train_accuracy", "valid_accuracy", "test_accuracy", "train_loss", "valid_loss", "test_loss",
    "gap_accuracy", "gap_loss", "w_norm",
)


def main(settings: Settings, args: argparse.Namespace) -> None:
    headline = final_rows(args.headline_history, "headline").iloc[0]
    grid = final_rows(args.grid_history, "grid")
    if set(grid["lambda"]) != set(settings.cifar10.lambda_grid):
        raise StageInputError(f"{args.grid_history} does not match cifar10.lambda_grid: run `dvc repro train_cifar10@grid`")
    chosen = best_lambda(grid, "valid_accuracy", higher_is_better=True)

    write_csv(args.table, [json_record(row) for row in grid[["lambda", *FINAL_KEYS, "epochs_run", "diverged"]].to_dict("records")])
    write_json(args.metrics, metrics(headline, grid, chosen))
    log.info("headline λ=%g: test accuracy %.3f, gap %+.3f", headline["lambda"], headline["test_accuracy"], headline["gap_accuracy"])
    if chosen is not None:
        log.info("validation accuracy picks λ=%g (test accuracy %.3f)", chosen, grid.set_index("lambda").loc[chosen, "test_accuracy"])


def final_rows(path: Path, run: str) -> pd.DataFrame:
    """The last recorded epoch of every λ of a training run; a run that diverged stopped at the epoch marked so."""
    history = read_table(path, made_by=f"train_cifar10@{run}", required=("lambda", "epoch", "diverged", *FINAL_KEYS))
    # tail(1), not last(): last() would skip a diverged run's NaN and report an earlier epoch's value.
    final = history.sort_values(["lambda", "epoch"]).groupby("lambda").tail(1).reset_index(drop=True)
    return final.rename(columns={"epoch": "epochs_run"})


def metrics(headline: pd.Series, grid: pd.DataFrame, chosen: float | None) -> dict:
    """The DVC metrics file: the headline run, every λ of the grid, and the λ that validation picks."""
    by_lambda = grid.set_index("lambda")
    top_test = best_lambda(grid, "test_accuracy", higher_is_better=True)
    return {
        "headline": {"lambda": float(headline["lambda"])} | summary(headline),
        "grid": {f"lambda_{lam:g}": summary(row) for lam, row in by_lambda.iterrows()},
        "chosen_by_validation": None if chosen is None else {
            "lambda": chosen,
            "valid_accuracy": finite_or_none(by_lambda.loc[chosen, "valid_accuracy"]),
            "test_accuracy": finite_or_none(by_lambda.loc[chosen, "test_accuracy"]),
        },
        # Descriptive only: a λ chosen by test accuracy would make that test accuracy an optimistic estimate.
        "highest_test_accuracy": None if top_test is None else {
            "lambda": top_test,
            "test_accuracy": finite_or_none(by_lambda.loc[top_test, "test_accuracy"]),
        },
    }


def summary(row: pd.Series) -> dict:
    return json_record({key: row[key] for key in FINAL_KEYS}) | {"epochs_run": int(row["epochs_run"]), "diverged": bool(row["diverged"])}


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(__doc__, "python -m stages.evaluate_cifar10", {
        "headline-history": "the headline run's per-epoch history",
        "grid-history": "the λ grid's per-epoch history",
        "metrics": "the DVC metrics file (output)",
        "table": "final metrics per λ, for dvc plots (output)",
    })


if __name__ == "__main__":
    stage.run_stage(main, parser())
