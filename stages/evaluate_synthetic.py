"""Evaluate the synthetic study over seeds: for every regulariser and strength, the final losses, ‖w‖ and exact zeros
per seed and their spread, beside the regulariser's exact optimum (ridge, lasso, dropout's per-feature ridge); the
strength cross-validation chooses on each seed, and how many of its folds were unstable at each strength; the study's
regulariser (synthetic.regularizer) in the metrics.
The headline run (`wd`) reports itself (train_synthetic headline), so a new `wd` does not re-run this stage."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from wdlab import stage
from wdlab.errors import StageInputError
from wdlab.files import grid_folders, load_tensors, read_table, write_csv, write_json
from wdlab.regularizers import REGISTRY
from wdlab.results import by_strength, json_record, seed_summary, stats, stats_of
from wdlab.settings import REGULARIZERS, Settings
from wdlab.synthetic.data import Split, load_dataset
from wdlab.synthetic.evaluation import EXACT, METRICS, RUN_KEYS, evaluate_run, loss
from wdlab.synthetic.selection import choose, chosen_per_seed, fold_counts, mean_cv_loss

log = logging.getLogger("wd-lab.evaluate_synthetic")

COMPARED = [
    "test_loss",
    "train_loss",
    "w_norm",
    "zeros",
    "cv_loss",
    "distance",
    "reference_test_loss",
    "reference_zeros",
]


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.synthetic, settings.synthetic.seeds
    train_set, test_set = load_dataset(args.data, seeds)
    grids = {
        name: evaluate_run(
            load_tensors(folder.model, made_by=f"train_synthetic@{name}", required=RUN_KEYS), train_set, test_set
        )
        for name, folder in grid_folders(args.grids, REGULARIZERS).items()
    }
    cv = read_table(
        args.cv, made_by="cross_validate", required=("regularizer", "seed", "fold", "lambda", "valid_loss", "unstable")
    )
    for regularizer in REGULARIZERS:
        held = cv[cv["regularizer"] == regularizer]
        if set(held["lambda"]) != set(study.strengths.of(regularizer)) or set(held["seed"]) != set(seeds):
            raise StageInputError(
                f"{args.cv} does not match synthetic.strengths.{regularizer} and seeds: run `dvc repro cross_validate`"
            )
    cv_by_seed = mean_cv_loss(cv)
    by_seed = pd.concat(grids.values()).merge(cv_by_seed, on=["regularizer", "seed", "lambda"])
    folds = fold_counts(cv_by_seed)  # unstable folds and all folds per (regulariser, strength), over seeds
    own = by_seed[by_seed["regularizer"] == study.regularizer]
    summary = seed_summary(own, METRICS + ["cv_loss"], untrained=EXACT).merge(
        folds[folds["regularizer"] == study.regularizer].drop(columns="regularizer"), on="lambda"
    )
    compared = pd.concat(
        [
            seed_summary(by_seed[by_seed["regularizer"] == r], COMPARED, untrained=EXACT).assign(regularizer=r)
            for r in REGULARIZERS
        ]
    ).merge(folds, on=["regularizer", "lambda"])

    write_csv(args.by_seed, [json_record(row) for row in by_seed.to_dict("records")])
    write_csv(args.table, [json_record(row) for row in summary.to_dict("records")])
    write_csv(args.compare, [json_record(row) for row in compared.to_dict("records")])
    chosen = chosen_per_seed(cv_by_seed[cv_by_seed["regularizer"] == study.regularizer])
    report = metrics(summary, chosen, by_seed, compared, train_set, test_set, settings)
    write_json(args.metrics, report)
    if (best := report["cv"]["best_lambda"]) is not None:
        at = report["grid"][f"lambda_{best:g}"]
        log.info(
            "%s at its cross-validated strength %g over %d seeds: test loss %.3g ± %.2g, ‖w‖ %.3f ± %.2g",
            study.regularizer,
            best,
            len(seeds),
            at["test_loss"]["mean"],
            at["test_loss"]["std"],
            at["w_norm"]["mean"],
            at["w_norm"]["std"],
        )


def metrics(
    summary: pd.DataFrame,
    chosen: pd.Series,
    by_seed: pd.DataFrame,
    compared: pd.DataFrame,
    train_set: Split,
    test_set: Split,
    settings: Settings,
) -> dict:
    """The DVC metrics file: the study's regulariser per strength (each metric's mean, std and 95 % interval over
    seeds), CV's choices and references; then every regulariser at its cross-validated strength, side by side."""
    study = settings.synthetic
    by_cv = choose(summary, "cv_loss_mean")
    zero_weight = loss(
        test_set, torch.zeros(len(study.seeds), 1, test_set.x.shape[-1]), train_set.y.mean(dim=-1)[:, None]
    )
    return {
        "seeds": len(study.seeds),
        "regularizer": study.regularizer,
        "grid": {
            f"lambda_{row['lambda']:g}": {
                "diverged": int(row["diverged"]),
                "unstable_folds": int(row["unstable_folds"]),
            }
            | {m: stats_of(row, m) for m in METRICS + ["cv_loss"]}
            for row in summary.to_dict("records")
        },
        "cv": {
            "folds": study.cv_folds,
            "best_lambda": by_cv,  # lowest CV loss averaged over seeds, of the strengths at most half unstable
            "chosen": {
                f"lambda_{strength:g}": int((chosen == strength).sum()) for strength in study.strength_grid
            },  # per seed's own CV
        },
        "regularizers": {r: compared_at_cv(compared[compared["regularizer"] == r]) for r in REGULARIZERS},
        **{
            f"{r.name}_vs_{r.same_update_as}": same_update(by_seed, r.name, r.same_update_as)
            for r in REGISTRY.values()
            if r.same_update_as
        },
        "reference": {
            "noise_floor": study.data.noise_std**2 / 2,  # Bayes limit: E[ε²]/2
            "zero_weight_test_loss": json_record(stats(pd.Series(zero_weight.tolist()))),  # predict the training mean
        },
    }


def compared_at_cv(rows: pd.DataFrame) -> dict:
    """One regulariser at the strength cross-validation chooses (lowest mean CV loss over its stable folds): what it
    reaches there; and its CV and test loss and unstable folds at every strength, the choice's evidence and what stays
    comparable when the choice moves."""
    best = choose(rows, "cv_loss_mean")
    at = rows[rows["lambda"] == best].iloc[0] if best is not None else None  # None: no strength had a stable majority
    unstable = {f"lambda_{row['lambda']:g}": int(row["unstable_folds"]) for row in rows.to_dict("records")}
    return (
        {"cv_strength": best}
        | {
            m: stats_of(at, m) if at is not None else None
            for m in ("test_loss", "w_norm", "zeros", "reference_test_loss")
        }
        | {
            "by_strength": {
                key: scores | {"unstable_folds": unstable[key]}
                for key, scores in by_strength(rows, ("cv_loss", "test_loss")).items()
            }
        }
    )


def same_update(by_seed: pd.DataFrame, name: str, other: str) -> dict:
    """Two regularisers whose momentum-free SGD update is the same one (decoupled decay and the L2 penalty): the
    largest relative difference of their final test losses and weights over every (seed, λ) both trained, which only
    rounding should make."""
    base = by_seed[by_seed["regularizer"] == other].set_index(["seed", "lambda"])
    same = by_seed[by_seed["regularizer"] == name].set_index(["seed", "lambda"])
    both = base.index.intersection(same.index)
    if both.empty:
        return {"pairs": 0, "max_rel_test_loss": None, "max_rel_w_norm": None}
    rel = {
        m: ((same.loc[both, m] - base.loc[both, m]).abs() / base.loc[both, m].abs().clip(lower=1e-12)).max()
        for m in ("test_loss", "w_norm")
    }
    return {"pairs": len(both), "max_rel_test_loss": float(rel["test_loss"]), "max_rel_w_norm": float(rel["w_norm"])}


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.evaluate_synthetic",
        {
            "data": "the dataset the generate stage wrote",
            "cv": "cross-validation losses per (regulariser, seed, fold, strength)",
            "metrics": "the DVC metrics file (output)",
            "by-seed": "final metrics per (regulariser, seed, strength), long format (output)",
            "table": (
                "the study's regulariser per strength: mean, std and 95 % interval over seeds, for dvc plots (output)"
            ),
            "compare": "every regulariser per strength: mean, std and 95 % interval over seeds (output)",
        },
    )
    cli.add_argument("--grids", type=Path, required=True, help="the grids' folder: one trained grid per regulariser")
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
