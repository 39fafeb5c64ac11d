"""Evaluate the synthetic study: final losses and ‖w‖ per λ, the exact ridge optimum, the λ cross-validation picks."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from wdlab import stage
from wdlab.errors import StageInputError
from wdlab.files import load_tensors, read_table, write_csv, write_json
from wdlab.results import best_lambda, json_record
from wdlab.settings import Settings
from wdlab.synthetic.data import Split, load_dataset
from wdlab.synthetic.ridge import ridge_solution
from wdlab.synthetic.selection import mean_cv_loss
from wdlab.synthetic.training import predict, squared_loss

log = logging.getLogger("wd-lab.evaluate_synthetic")

METRIC_KEYS = ["train_loss", "test_loss", "w_norm", "objective", "ridge_test_loss", "ridge_objective", "diverged"]


def main(settings: Settings, args: argparse.Namespace) -> None:
    train_set, test_set = load_dataset(args.data)
    headline = evaluate_run(load_run(args.headline, "headline"), train_set, test_set).iloc[0]
    grid = evaluate_run(load_run(args.grid, "grid"), train_set, test_set)
    cv = read_table(args.cv, made_by="cross_validate", required=("fold", "lambda", "valid_loss"))
    if set(cv["lambda"]) != set(settings.synthetic.lambda_grid):
        raise StageInputError(f"{args.cv} does not match synthetic.lambda_grid: run `dvc repro cross_validate`")
    grid = grid.merge(mean_cv_loss(cv), on="lambda")
    best = best_lambda(grid, "cv_loss", higher_is_better=False)

    write_csv(args.table, grid.to_dict("records"))
    write_json(args.metrics, metrics(headline, grid, best, train_set, test_set, settings))
    log.info("headline λ=%g: test loss %.3g, ‖w‖ %.3f; cross-validation picks λ=%g", headline["lambda"], headline["test_loss"], headline["w_norm"], best)


def load_run(path: Path, run: str) -> dict:
    return load_tensors(path, made_by=f"train_synthetic@{run}", required=("lambdas", "weight", "bias", "diverged_epoch"))


def evaluate_run(run: dict, train_set: Split, test_set: Split) -> pd.DataFrame:
    """Final losses and ‖w‖ of each trained model beside the exact ridge solution for its λ."""
    rows = []
    for g, lam in enumerate(run["lambdas"].tolist()):
        weight, bias = run["weight"][g : g + 1], run["bias"][g : g + 1]
        ridge_w, ridge_b = ridge_solution(train_set, lam)
        train_loss, ridge_train_loss = _loss(train_set, weight, bias), _loss(train_set, ridge_w[None], ridge_b[None])
        rows.append({
            "lambda": lam,
            "train_loss": train_loss,
            "test_loss": _loss(test_set, weight, bias),
            "w_norm": weight.norm().item(),
            "objective": train_loss + lam / 2 * weight.double().norm().item() ** 2,  # L + λ/2·‖w‖², what SGD minimises
            "ridge_train_loss": ridge_train_loss,
            "ridge_test_loss": _loss(test_set, ridge_w[None], ridge_b[None]),
            "ridge_w_norm": ridge_w.norm().item(),
            "ridge_objective": ridge_train_loss + lam / 2 * ridge_w.norm().item() ** 2,
            "diverged": bool(run["diverged_epoch"][g] >= 0),
        })
    return pd.DataFrame(rows)


def _loss(split: Split, weight: torch.Tensor, bias: torch.Tensor) -> float:
    # (ŷ − y)²/2 averaged, in float64 so the exact solution is not blurred by rounding.
    return squared_loss(predict(split.x.double(), weight.double(), bias.double()), split.y.double()).item()


def metrics(headline: pd.Series, grid: pd.DataFrame, best: float, train_set: Split, test_set: Split, settings: Settings) -> dict:
    """The DVC metrics file: headline run, every λ of the grid, the CV choice and two reference levels."""
    return {
        "headline": {"lambda": float(headline["lambda"])} | json_record(headline[METRIC_KEYS].to_dict()),
        "grid": {f"lambda_{row['lambda']:g}": json_record({k: row[k] for k in METRIC_KEYS + ["cv_loss"]}) for row in grid.to_dict("records")},
        "cv": {"best_lambda": best, "folds": settings.synthetic.cv_folds, "best_cv_loss": float(grid["cv_loss"].min())},
        "reference": {
            "noise_floor": settings.synthetic.data.noise_std**2 / 2,  # Bayes limit: E[ε²]/2
            "zero_weight_test_loss": _loss(test_set, torch.zeros(1, test_set.x.shape[1]), train_set.y.mean()[None]),
        },
    }


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(__doc__, "python -m stages.evaluate_synthetic", {
        "data": "the dataset the generate stage wrote",
        "headline": "the headline run's trained weights",
        "grid": "the λ grid's trained weights",
        "cv": "cross-validation losses per (fold, λ)",
        "metrics": "the DVC metrics file (output)",
        "table": "final metrics per λ, for dvc plots (output)",
    })


if __name__ == "__main__":
    stage.run_stage(main, parser())
