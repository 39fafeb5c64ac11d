"""Choose λ by k-fold cross-validation of the SGD procedure on the training set (never the test set)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wdlab import stage
from wdlab.device import pick_device
from wdlab.files import write_csv
from wdlab.results import best_lambda, flatten
from wdlab.settings import Settings
from wdlab.synthetic.data import load_dataset
from wdlab.synthetic.selection import cross_validate, cv_table, mean_cv_loss
from wdlab.tracking import Tracker

log = logging.getLogger("wd-lab.cross_validate")


def main(settings: Settings, args: argparse.Namespace) -> None:
    train_set, _ = load_dataset(args.data)  # the test split stays unseen here
    study = settings.synthetic
    device = pick_device(settings.device)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)
    params = {"seed": settings.seed, "cv_folds": study.cv_folds} | flatten({"train": study.train.model_dump()})
    with tracker.run(f"cross-validation ({study.cv_folds} folds)", params, "synthetic-cv") as run_id:
        cv_loss = cross_validate(train_set, study.lambda_grid, study.train, study.cv_folds, settings.seed, device)
        cv = cv_table(study.lambda_grid, cv_loss)
        mean = mean_cv_loss(cv)
        best = best_lambda(mean, "cv_loss", higher_is_better=False)
        tracker.log_history(run_id, {}, {f"cv_loss_lambda_{lam:g}": v for lam, v in zip(mean["lambda"], mean["cv_loss"])} | {"best_lambda": best})
    write_csv(args.out, cv.to_dict("records"))
    log.info("%d-fold cross-validation picks λ = %g", study.cv_folds, best)


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(__doc__, "python -m stages.cross_validate", {
        "data": "the dataset the generate stage wrote",
        "out": "validation loss per (fold, λ) (output)",
    })


if __name__ == "__main__":
    stage.run_stage(main, parser())
