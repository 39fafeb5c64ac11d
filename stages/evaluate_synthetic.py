"""Evaluate the synthetic study over seeds: final losses and ‖w‖ per (seed, λ) and their spread, the exact ridge
optimum, and the λ cross-validation chooses on each seed."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from wdlab import stage
from wdlab.errors import StageInputError
from wdlab.files import load_tensors, read_table, write_csv, write_json
from wdlab.results import best_lambda, json_record, mean_curve, seed_summary, stats, stats_of
from wdlab.settings import Settings
from wdlab.synthetic.data import Split, load_dataset
from wdlab.synthetic.ridge import ridge_solution
from wdlab.synthetic.selection import chosen_per_seed, mean_cv_loss
from wdlab.synthetic.training import predict, squared_loss

log = logging.getLogger("wd-lab.evaluate_synthetic")

METRICS = ["train_loss", "test_loss", "w_norm", "objective", "ridge_test_loss", "ridge_w_norm", "ridge_objective"]
EXACT = ("ridge_test_loss", "ridge_w_norm", "ridge_objective")  # closed forms: a diverged SGD run does not touch them


def main(settings: Settings, args: argparse.Namespace) -> None:
    seeds = settings.synthetic.seeds
    train_set, test_set = load_dataset(args.data, seeds)
    headline = evaluate_run(load_run(args.headline, "headline"), train_set, test_set)
    grid = evaluate_run(load_run(args.grid, "grid"), train_set, test_set)
    cv = read_table(args.cv, made_by="cross_validate", required=("seed", "fold", "lambda", "valid_loss"))
    if set(cv["lambda"]) != set(settings.synthetic.lambda_grid) or set(cv["seed"]) != set(seeds):
        raise StageInputError(f"{args.cv} does not match synthetic.lambda_grid and seeds: run `dvc repro cross_validate`")
    cv_by_seed = mean_cv_loss(cv)
    grid = grid.merge(cv_by_seed, on=["seed", "lambda"])
    summary = seed_summary(grid, METRICS + ["cv_loss"], untrained=EXACT)

    write_csv(args.by_seed, [json_record(row) for row in grid.to_dict("records")])
    write_csv(args.table, [json_record(row) for row in summary.to_dict("records")])
    write_csv(args.headline_curve, mean_curve(read_table(args.headline_history, "train_synthetic@headline", required=("epoch",))))
    write_json(args.metrics, metrics(headline, summary, chosen_per_seed(cv_by_seed), train_set, test_set, settings))
    head = seed_summary(headline, ["test_loss", "w_norm"]).iloc[0]
    log.info("headline λ=%g over %d seeds: test loss %.3g ± %.2g, ‖w‖ %.3f ± %.2g", head["lambda"], len(seeds),
             head["test_loss_mean"], head["test_loss_std"], head["w_norm_mean"], head["w_norm_std"])


def load_run(path: Path, run: str) -> dict:
    return load_tensors(path, made_by=f"train_synthetic@{run}", required=("seeds", "lambdas", "weight", "bias", "diverged_epoch"))


def evaluate_run(run: dict, train_set: Split, test_set: Split) -> pd.DataFrame:
    """Per (seed, λ): final losses and ‖w‖ of the trained model beside the exact ridge solution on that seed's data."""
    rows = []
    for g, lam in enumerate(run["lambdas"].tolist()):
        weight, bias = run["weight"][:, g : g + 1], run["bias"][:, g : g + 1]  # [S, 1, d], [S, 1]
        ridge_w, ridge_b = ridge_solution(train_set, lam)
        ridge_w, ridge_b = ridge_w[:, None], ridge_b[:, None]
        train_loss, ridge_train_loss = _loss(train_set, weight, bias), _loss(train_set, ridge_w, ridge_b)
        test_loss, ridge_test_loss = _loss(test_set, weight, bias), _loss(test_set, ridge_w, ridge_b)
        w_norm, ridge_w_norm = weight[:, 0].double().norm(dim=-1), ridge_w[:, 0].norm(dim=-1)
        for s, seed in enumerate(run["seeds"].tolist()):
            rows.append({
                "seed": seed,
                "lambda": lam,
                "train_loss": train_loss[s].item(),
                "test_loss": test_loss[s].item(),
                "w_norm": w_norm[s].item(),
                "objective": (train_loss[s] + lam / 2 * w_norm[s] ** 2).item(),  # L + λ/2·‖w‖², what SGD minimises
                "ridge_train_loss": ridge_train_loss[s].item(),
                "ridge_test_loss": ridge_test_loss[s].item(),
                "ridge_w_norm": ridge_w_norm[s].item(),
                "ridge_objective": (ridge_train_loss[s] + lam / 2 * ridge_w_norm[s] ** 2).item(),
                "diverged": bool(run["diverged_epoch"][s, g] >= 0),
            })
    return pd.DataFrame(rows)


def _loss(split: Split, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # (ŷ − y)²/2 averaged per seed, in float64 so the exact solution is not blurred by rounding: [S].
    return squared_loss(predict(split.x.double(), weight.double(), bias.double()), split.y.double())[:, 0]


def metrics(headline: pd.DataFrame, summary: pd.DataFrame, chosen: pd.Series, train_set: Split, test_set: Split, settings: Settings) -> dict:
    """The DVC metrics file: per λ each metric's mean, std and 95 % interval over seeds; CV's choices; references."""
    study = settings.synthetic
    head = seed_summary(headline, METRICS, untrained=EXACT).iloc[0]
    by_cv = best_lambda(summary, "cv_loss_mean", higher_is_better=False)
    zero_weight = _loss(test_set, torch.zeros(len(study.seeds), 1, test_set.x.shape[-1]), train_set.y.mean(dim=-1)[:, None])
    return {
        "seeds": len(study.seeds),
        "headline": {"lambda": float(head["lambda"]), "diverged": int(head["diverged"])} | {m: stats_of(head, m) for m in METRICS},
        "grid": {
            f"lambda_{row['lambda']:g}": {"diverged": int(row["diverged"])} | {m: stats_of(row, m) for m in METRICS + ["cv_loss"]}
            for row in summary.to_dict("records")
        },
        "cv": {
            "folds": study.cv_folds,
            "best_lambda": by_cv,  # lowest CV loss averaged over seeds
            "chosen": {f"lambda_{lam:g}": int((chosen == lam).sum()) for lam in study.lambda_grid},  # per seed's own CV
        },
        "reference": {
            "noise_floor": study.data.noise_std**2 / 2,  # Bayes limit: E[ε²]/2
            "zero_weight_test_loss": json_record(stats(pd.Series(zero_weight.tolist()))),  # predict the training mean
        },
    }


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(__doc__, "python -m stages.evaluate_synthetic", {
        "data": "the dataset the generate stage wrote",
        "headline": "the headline run's trained weights",
        "grid": "the λ grid's trained weights",
        "cv": "cross-validation losses per (seed, fold, λ)",
        "headline-history": "the headline run's per-epoch history, per seed",
        "metrics": "the DVC metrics file (output)",
        "by-seed": "final metrics per (seed, λ), long format (output)",
        "table": "final metrics per λ: mean, std and 95 % interval over seeds, for dvc plots (output)",
        "headline-curve": "the headline run's per-epoch curves averaged over seeds, for dvc plots (output)",
    })


if __name__ == "__main__":
    stage.run_stage(main, parser())
