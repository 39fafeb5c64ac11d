"""Choosing λ for the synthetic study: k-fold cross-validation of the SGD procedure on the training set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from wdlab import streams
from wdlab.settings import SyntheticTrain
from wdlab.synthetic.data import Split
from wdlab.synthetic.training import train_grid

if TYPE_CHECKING:
    import pandas as pd


def kfold_indices(n: int, folds: int, seed: int) -> list[torch.Tensor]:
    """A seeded shuffle of 0..n−1 cut into `folds` near-equal validation folds."""
    if folds > n:
        raise ValueError(f"cannot make {folds} folds from {n} samples")
    perm = torch.randperm(n, generator=streams.generator(seed, streams.SYNTHETIC_FOLDS))
    return list(perm.tensor_split(folds))


def cross_validate(
    train_set: Split, lambdas: Sequence[float], spec: SyntheticTrain, folds: int, seed: int, device: torch.device
) -> torch.Tensor:
    """Validation loss [folds, G] of the same SGD procedure, each fold held out in turn."""
    n = len(train_set.y)
    losses = []
    for held_out in kfold_indices(n, folds, seed):
        keep = torch.ones(n, dtype=torch.bool)
        keep[held_out] = False
        fit = Split(train_set.x[keep], train_set.y[keep])
        valid = Split(train_set.x[held_out], train_set.y[held_out])
        run = train_grid(fit, lambdas, spec, seed, device, eval_sets={"valid": valid}, progress=False)
        losses.append(run.history["valid_loss"][-1])
    return torch.stack(losses)


def cv_table(lambdas: Sequence[float], cv_loss: torch.Tensor) -> pd.DataFrame:
    """One row per (fold, λ): the validation loss of the model trained on the other folds."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"fold": fold, "lambda": lam, "valid_loss": cv_loss[fold, g].item()}
            for fold in range(cv_loss.shape[0])
            for g, lam in enumerate(lambdas)
        ]
    )


def mean_cv_loss(cv: pd.DataFrame) -> pd.DataFrame:
    """Per λ, the validation loss averaged over folds: columns lambda, cv_loss."""
    return cv.groupby("lambda", as_index=False)["valid_loss"].mean().rename(columns={"valid_loss": "cv_loss"})
