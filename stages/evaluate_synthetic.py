"""Evaluate the synthetic study: final losses and ‖w‖ per λ, the exact ridge optimum, the λ cross-validation picks."""

from __future__ import annotations

import argparse
import logging
import math

import pandas as pd
import torch

from stages import linreg, paths
from stages.common import run_stage, stage_parser
from stages.files import StageInputError, load_tensors, read_table, write_csv, write_json
from stages.settings import Settings

log = logging.getLogger("wd-lab.evaluate_synthetic")


def main(settings: Settings, args: argparse.Namespace) -> None:
    train_set, test_set = linreg.load_dataset(paths.SYNTHETIC_DATA)
    headline = evaluate_run(load_run("headline"), train_set, test_set)
    grid = evaluate_run(load_run("grid"), train_set, test_set)
    cv = load_cv(settings.synthetic.lambda_grid)
    grid = grid.merge(cv.groupby("lambda", as_index=False)["valid_loss"].mean().rename(columns={"valid_loss": "cv_loss"}), on="lambda")
    best = linreg.pick_lambda(grid["lambda"].tolist(), torch.tensor(grid["cv_loss"].to_numpy())[None])

    write_csv(paths.SYNTHETIC_BY_LAMBDA, grid.to_dict("records"))
    write_json(paths.SYNTHETIC_METRICS, metrics(headline.iloc[0], grid, best, train_set, test_set, settings))
    row = headline.iloc[0]
    log.info("headline λ=%g: test loss %.3g, ‖w‖ %.3f; cross-validation picks λ=%g", row["lambda"], row["test_loss"], row["w_norm"], best)


def load_run(run: str) -> dict:
    return load_tensors(paths.synthetic_model(run), made_by=f"train_synthetic@{run}", required=("lambdas", "weight", "bias"))


def load_cv(lambdas: tuple[float, ...]) -> pd.DataFrame:
    cv = read_table(paths.SYNTHETIC_CV, made_by="cross_validate")
    if set(cv.columns) != {"fold", "lambda", "valid_loss"} or set(cv["lambda"]) != set(lambdas):
        raise StageInputError(f"{paths.SYNTHETIC_CV} does not match synthetic.lambda_grid: run `dvc repro cross_validate`")
    return cv


def evaluate_run(run: dict, train_set: linreg.Split, test_set: linreg.Split) -> pd.DataFrame:
    """Final losses and ‖w‖ of each trained model beside the exact ridge solution for its λ."""
    rows = []
    for g, lam in enumerate(run["lambdas"].tolist()):
        weight, bias = run["weight"][g : g + 1], run["bias"][g : g + 1]
        ridge_w, ridge_b = linreg.ridge_solution(train_set, lam)
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
            "diverged": bool(run["diverged_epoch"][g] >= 0) if "diverged_epoch" in run else False,
        })
    return pd.DataFrame(rows)


def _loss(split: linreg.Split, weight: torch.Tensor, bias: torch.Tensor) -> float:
    # (ŷ − y)²/2 averaged, in float64 so the exact solution is not blurred by rounding.
    pred = linreg.predict(split.x.double(), weight.double(), bias.double())
    return linreg.squared_loss(pred, split.y.double()).item()


def metrics(headline: pd.Series, grid: pd.DataFrame, best: float, train_set: linreg.Split, test_set: linreg.Split, settings: Settings) -> dict:
    """The DVC metrics file: headline run, every λ of the grid, the CV choice and two reference levels."""
    keys = ["train_loss", "test_loss", "w_norm", "objective", "ridge_test_loss", "ridge_objective", "diverged"]
    return {
        "headline": {"lambda": float(headline["lambda"])} | _clean(headline[keys].to_dict()),
        "grid": {f"lambda_{lam:g}": _clean(row[keys + ["cv_loss"]].to_dict()) for lam, (_, row) in zip(grid["lambda"], grid.iterrows())},
        "cv": {"best_lambda": best, "folds": settings.synthetic.cv_folds, "best_cv_loss": float(grid["cv_loss"].min())},
        "reference": {
            "noise_floor": settings.synthetic.data.noise_std**2 / 2,  # Bayes limit: E[ε²]/2
            "zero_weight_test_loss": _loss(test_set, torch.zeros(1, test_set.x.shape[1]), train_set.y.mean()[None]),
        },
    }


def _clean(values: dict) -> dict:
    """JSON-friendly numbers: bools stay bools, NaN/inf of a diverged run become null."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or key == "diverged":
            out[key] = bool(value)
        else:
            value = float(value)
            out[key] = value if math.isfinite(value) else None
    return out


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__, "python -m stages.evaluate_synthetic"))
