"""Choosing λ for the synthetic study: k-fold cross-validation of the SGD procedure on the training set, each fold
whose training blew up marked unstable and left out of the choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

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


class FoldLosses(NamedTuple):
    """Each fold's run, [folds, S, G]: trained on the other folds, then scored on the held-out one."""

    valid_loss: torch.Tensor  # the held-out fold's loss at the end
    train_loss: torch.Tensor  # the loss on the samples it trained on, at the end
    initial_train_loss: torch.Tensor  # the same at epoch 0, before any step: the untrained model's


def unstable(train_loss: torch.Tensor, initial_train_loss: torch.Tensor) -> torch.Tensor:
    """A fold whose SGD blew up: its training loss ended above where it started (or, diverged, is not finite).

    The finite counterpart of a diverged run (training.py: a non-finite training loss): SGD whose steps are stable
    lowers the loss it trains on, so an end above the start means steps too large for that fold, not yet overflowed.
    The threshold is the run's own starting loss, no tuned factor. With the folds' former batches (16 samples as
    5, 5, 5 and a lone sample, whose step blew up dropout at p = 0.9 and noise at σ = 3; training.batch_orders) the
    folds of results/synthetic/cv.csv (default params, 10 seeds × 5 folds) sat far from it on both sides: the 2,050
    folds of the other 41 strengths, every regulariser's, ended at ≤ 0.11× their start; at dropout p = 0.9 all 50
    folds ended 4.4× to 3.4·10⁵× above it (held-out losses 538 to 3·10⁷, against ≤ 12 at p = 0.7), at noise σ = 3
    49 of 50 (0.54× to 1.0·10³×). The references one might reach for first do not separate them: the trivial
    predictor's held-out loss (the training mean) is ~0.01, but λ = 0 keeps its N(0, 1) initialisation in the
    directions the 16 samples leave free and ends 820× to 1.9·10⁵× above it on stable folds, past p = 0.9's lowest
    (4.7·10⁴×); the untrained model's held-out loss is exceeded up to 3.05× by λ = 0 but only 2.9× by p = 0.9's
    mildest fold; and a robust spread of one strength's folds (median ± k·MAD) flags only the tail where, as at
    p = 0.9, every fold blew up.
    """
    return ~(train_loss <= initial_train_loss)  # ¬(end ≤ start): NaN counts as unstable


def cross_validate(
    train_set: Split,
    strengths: Sequence[float],
    spec: SyntheticTrain,
    folds: int,
    seeds: Sequence[int],
    device: torch.device,
    regularizer: str = BASELINE,
) -> FoldLosses:
    """The losses [folds, S, G] of the same SGD procedure, each fold held out in turn, every seed at once."""
    n = train_set.y.shape[-1]
    rows = torch.arange(len(seeds))[:, None]
    runs = []
    for held_out in kfold_indices(n, folds, seeds):
        keep = torch.ones(len(seeds), n, dtype=torch.bool)
        keep[rows, held_out] = False
        kept = keep.nonzero()[:, 1].view(len(seeds), -1)  # [S, n − m], in order
        fit = Split(train_set.x[rows, kept], train_set.y[rows, kept])
        valid = Split(train_set.x[rows, held_out], train_set.y[rows, held_out])
        run = train_grid(
            fit, strengths, spec, seeds, device, eval_sets={"valid": valid}, progress=False, regularizer=regularizer
        )
        history = run.history
        runs.append((history["valid_loss"][-1], history["train_loss"][-1], history["train_loss"][0]))
    return FoldLosses(*(torch.stack(losses) for losses in zip(*runs)))


def cv_table(regularizer: str, seeds: Sequence[int], strengths: Sequence[float], folds: FoldLosses) -> pd.DataFrame:
    """One row per (seed, fold, strength): the losses of the model trained on the other folds, and whether its
    training blew up (`unstable`)."""
    import pandas as pd

    flags = unstable(folds.train_loss, folds.initial_train_loss)
    return pd.DataFrame(
        [
            {
                "regularizer": regularizer,
                "seed": seed,
                "fold": fold,
                "lambda": strength,
                "valid_loss": folds.valid_loss[fold, s, g].item(),
                "train_loss": folds.train_loss[fold, s, g].item(),
                "initial_train_loss": folds.initial_train_loss[fold, s, g].item(),
                "unstable": bool(flags[fold, s, g]),
            }
            for s, seed in enumerate(seeds)
            for fold in range(folds.valid_loss.shape[0])
            for g, strength in enumerate(strengths)
        ]
    )


def mostly_unstable(table: pd.DataFrame) -> pd.Series:
    """Strengths whose unstable folds are more than half of their folds (per seed, or summed over seeds): never
    chosen, like a diverged run. Past half, the stable folds are the lucky minority of a procedure that more often
    blows up than not, and their mean would hide it; up to half, their mean is a fair score and the strength stays."""
    return 2 * table["unstable_folds"] > table["folds"]


def mean_cv_loss(cv: pd.DataFrame) -> pd.DataFrame:
    """Per (regulariser, seed, strength), the validation loss averaged over the stable folds (unstable ones left out;
    none, NaN, where most folds are unstable), how many folds were unstable and how many there were: columns
    regularizer, seed, lambda, cv_loss, unstable_folds, folds."""
    stable = cv.assign(valid_loss=cv["valid_loss"].where(~cv["unstable"].astype(bool)))
    by_seed = stable.groupby(["regularizer", "seed", "lambda"], as_index=False).agg(
        cv_loss=("valid_loss", "mean"), unstable_folds=("unstable", "sum"), folds=("fold", "count")
    )
    by_seed["unstable_folds"] = by_seed["unstable_folds"].astype(int)
    return by_seed.assign(cv_loss=by_seed["cv_loss"].mask(mostly_unstable(by_seed)))


def fold_counts(cv_by_seed: pd.DataFrame) -> pd.DataFrame:
    """Per (regulariser, strength), the unstable folds and all folds summed over seeds."""
    return cv_by_seed.groupby(["regularizer", "lambda"], as_index=False)[["unstable_folds", "folds"]].sum()


def choose(table: pd.DataFrame, score: str) -> float | None:
    """The strength cross-validation chooses: the lowest `score` (mean over stable folds) among the strengths whose
    folds are at most half unstable; a diverged run or a non-finite score never wins; ties go to the smaller one."""
    from wdlab.results import best_lambda

    return best_lambda(table[~mostly_unstable(table)], score, higher_is_better=False)


def chosen_per_seed(cv_by_seed: pd.DataFrame) -> pd.Series:
    """The strength cross-validation chooses on each seed's training set (one regulariser's rows): seed → strength
    (NaN where no strength is stable)."""
    return cv_by_seed.groupby("seed").apply(lambda table: choose(table, "cv_loss"))
