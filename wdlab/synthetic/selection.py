"""Choosing λ for the synthetic study: k-fold cross-validation of the SGD procedure on the training set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from wdlab import streams
from wdlab.regularizers import BASELINE
from wdlab.settings import SyntheticTrain
from wdlab.synthetic.data import Split
from wdlab.synthetic.training import train_grid

if TYPE_CHECKING:
    import pandas as pd


def kfold_indices(n: int, folds: int, seeds: Sequence[int]) -> list[torch.Tensor]:
    """Per fold, each seed's held-out indices [S, m]: a seeded shuffle of 0..n−1 cut into `folds` near-equal folds
    (fold f holds out as many samples for every seed)."""
    if folds > n:
        raise ValueError(f"cannot make {folds} folds from {n} samples")
    perms = torch.stack(
        [torch.randperm(n, generator=streams.generator(seed, streams.SYNTHETIC_FOLDS)) for seed in seeds]
    )
    return list(perms.tensor_split(folds, dim=1))


def cross_validate(
    train_set: Split,
    strengths: Sequence[float],
    spec: SyntheticTrain,
    folds: int,
    seeds: Sequence[int],
    device: torch.device,
    regularizer: str = BASELINE,
) -> torch.Tensor:
    """Validation loss [folds, S, G] of the same SGD procedure, each fold held out in turn, every seed at once."""
    n = train_set.y.shape[-1]
    rows = torch.arange(len(seeds))[:, None]
    losses = []
    for held_out in kfold_indices(n, folds, seeds):
        keep = torch.ones(len(seeds), n, dtype=torch.bool)
        keep[rows, held_out] = False
        kept = keep.nonzero()[:, 1].view(len(seeds), -1)  # [S, n − m], in order
        fit = Split(train_set.x[rows, kept], train_set.y[rows, kept])
        valid = Split(train_set.x[rows, held_out], train_set.y[rows, held_out])
        run = train_grid(
            fit, strengths, spec, seeds, device, eval_sets={"valid": valid}, progress=False, regularizer=regularizer
        )
        losses.append(run.history["valid_loss"][-1])
    return torch.stack(losses)


def cv_table(regularizer: str, seeds: Sequence[int], strengths: Sequence[float], cv_loss: torch.Tensor) -> pd.DataFrame:
    """One row per (seed, fold, strength): the validation loss of the model trained on the other folds."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "regularizer": regularizer,
                "seed": seed,
                "fold": fold,
                "lambda": strength,
                "valid_loss": cv_loss[fold, s, g].item(),
            }
            for s, seed in enumerate(seeds)
            for fold in range(cv_loss.shape[0])
            for g, strength in enumerate(strengths)
        ]
    )


def mean_cv_loss(cv: pd.DataFrame) -> pd.DataFrame:
    """Per (regulariser, seed, strength), the validation loss averaged over folds: columns regularizer, seed,
    lambda, cv_loss."""
    keys = ["regularizer", "seed", "lambda"]
    return cv.groupby(keys, as_index=False)["valid_loss"].mean().rename(columns={"valid_loss": "cv_loss"})


def chosen_per_seed(cv_by_seed: pd.DataFrame) -> pd.Series:
    """The strength cross-validation chooses on each seed's training set (one regulariser's rows): seed → strength
    (NaN where every strength diverged)."""
    from wdlab.results import best_lambda

    return cv_by_seed.groupby("seed").apply(lambda table: best_lambda(table, "cv_loss", higher_is_better=False))
