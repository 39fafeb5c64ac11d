"""Choose λ by k-fold cross-validation of the SGD procedure on the training set (never the test set)."""

from __future__ import annotations

import argparse
import logging

from stages import linreg, paths
from stages.common import pick_device, run_stage, stage_parser
from stages.files import write_csv
from stages.settings import Settings
from stages.tracking import Tracker, flatten, run_tags

log = logging.getLogger("wd-lab.cross_validate")


def main(settings: Settings, args: argparse.Namespace) -> None:
    train_set, _ = linreg.load_dataset(paths.SYNTHETIC_DATA)  # the test split stays unseen here
    study = settings.synthetic
    device = pick_device(settings.device)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)
    params = {"seed": settings.seed, "cv_folds": study.cv_folds} | flatten("train", study.train)
    with tracker.run(f"cross-validation ({study.cv_folds} folds)", params, run_tags("synthetic-cv")) as run_id:
        cv_loss = linreg.cross_validate(train_set, study.lambda_grid, study.train, study.cv_folds, settings.seed, device)
        best = linreg.pick_lambda(study.lambda_grid, cv_loss)
        mean = cv_loss.mean(dim=0).tolist()
        tracker.log_metrics(run_id, final={f"cv_loss_lambda_{lam:g}": v for lam, v in zip(study.lambda_grid, mean)} | {"best_lambda": best})
    write_csv(paths.SYNTHETIC_CV, cv_rows(study.lambda_grid, cv_loss))
    log.info("%d-fold cross-validation picks λ = %g", study.cv_folds, best)


def cv_rows(lambdas, cv_loss) -> list[dict]:
    """One row per (fold, λ): the validation loss of the model trained on the other folds."""
    return [
        {"fold": fold, "lambda": lam, "valid_loss": cv_loss[fold, g].item()}
        for fold in range(cv_loss.shape[0])
        for g, lam in enumerate(lambdas)
    ]


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__, "python -m stages.cross_validate"))
