"""High-dimensional linear regression with weight decay, trained over a whole λ grid at once."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from stages.common import seeded_generator
from stages.settings import SyntheticData, SyntheticTrain

log = logging.getLogger("wd-lab.linreg")

# Independent random streams drawn from the one seed in params.yaml.
DATA_STREAM, INIT_STREAM, ORDER_STREAM, FOLD_STREAM = 1, 2, 3, 4


class Split(NamedTuple):
    x: torch.Tensor  # [n, d]
    y: torch.Tensor  # [n]


def make_dataset(spec: SyntheticData, seed: int) -> dict[str, torch.Tensor]:
    """y = X·w* + b* + ε with X ~ N(0, 1) and ε ~ N(0, noise_std²); train and test from one stream."""
    gen = seeded_generator(seed, DATA_STREAM)
    n = spec.n_train + spec.n_test
    x = torch.randn(n, spec.n_features, generator=gen)
    true_w = torch.full((spec.n_features,), spec.true_w)
    y = x @ true_w + spec.true_b + spec.noise_std * torch.randn(n, generator=gen)
    return {
        "x_train": x[: spec.n_train].contiguous(),
        "y_train": y[: spec.n_train].contiguous(),
        "x_test": x[spec.n_train :].contiguous(),
        "y_test": y[spec.n_train :].contiguous(),
        "true_w": true_w,
        "true_b": torch.tensor(spec.true_b),
    }


def squared_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of (ŷ − y)²/2 over samples, one value per model: pred [n, G], y [n] → [G]."""
    return ((pred - y[:, None]) ** 2).mean(dim=0) / 2


def predict(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ŷ = X·w + b for every model of the grid: x [n, d], weight [G, d], bias [G] → [n, G]."""
    return x @ weight.T + bias


@dataclass
class GridRun:
    """The trained models of one λ grid and their per-epoch history (epoch 0 = initialisation)."""

    lambdas: tuple[float, ...]
    weight: torch.Tensor  # [G, d]
    bias: torch.Tensor  # [G]
    history: dict[str, torch.Tensor]  # name → [epochs + 1, G]
    diverged_epoch: list[int | None]  # first epoch with a non-finite loss, per λ

    def final(self, name: str) -> list[float]:
        return self.history[name][-1].tolist()


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[list[torch.Tensor]]:
    """A fresh random permutation per epoch cut into minibatches, shared by every λ."""
    gen = seeded_generator(seed, ORDER_STREAM)
    return [list(torch.randperm(n, generator=gen).split(batch_size)) for _ in range(epochs)]


def initial_params(n_models: int, n_features: int, init_std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w ~ N(0, init_std²), b = 0; every λ starts from the same w, so λ alone explains the differences."""
    w0 = init_std * torch.randn(n_features, generator=seeded_generator(seed, INIT_STREAM))
    return w0.expand(n_models, n_features).clone(), torch.zeros(n_models)


def train_grid(
    train_set: Split,
    lambdas: Sequence[float],
    spec: SyntheticTrain,
    seed: int,
    device: torch.device,
    eval_sets: Mapping[str, Split] | None = None,
    progress: bool = True,
) -> GridRun:
    """Minibatch SGD on every λ of the grid together: one tensor program with a leading grid dimension."""
    eval_sets = {"train": train_set, **(eval_sets or {})}
    eval_sets = {name: Split(s.x.to(device), s.y.to(device)) for name, s in eval_sets.items()}
    x, y = eval_sets["train"]
    weight, bias = initial_params(len(lambdas), x.shape[1], spec.init_std, seed)
    weight, bias = weight.to(device), bias.to(device)
    lam = torch.tensor(list(lambdas), dtype=x.dtype, device=device)
    step = _ScratchStepper(weight, bias, lam, spec.lr) if spec.implementation == "scratch" else _ConciseStepper(
        weight, bias, lambdas, spec.lr
    )

    history: dict[str, list[torch.Tensor]] = {}
    diverged: list[int | None] = [None] * len(lambdas)

    def record(epoch: int, weight: torch.Tensor, bias: torch.Tensor) -> bool:
        with torch.no_grad():
            for name, split in eval_sets.items():
                history.setdefault(f"{name}_loss", []).append(squared_loss(predict(split.x, weight, bias), split.y).cpu())
            history.setdefault("w_norm", []).append(weight.norm(dim=1).cpu())
        finite = torch.isfinite(history["train_loss"][-1]) & torch.isfinite(history["w_norm"][-1])
        for g in (~finite).nonzero().flatten().tolist():
            if diverged[g] is None:
                diverged[g] = epoch
                log.warning("λ=%g diverged at epoch %d (non-finite loss): lower lr or λ", lambdas[g], epoch)
        return bool(finite.any())

    record(0, *step.params())
    order = batch_order(len(y), spec.batch_size, spec.epochs, seed)
    epochs = tqdm(order, desc=f"SGD on {len(lambdas)} λ", unit="epoch", disable=not progress or None, leave=False)
    for epoch, batches in enumerate(epochs, start=1):
        for idx in batches:
            idx = idx.to(device)
            step(x[idx], y[idx])
        if not record(epoch, *step.params()):
            log.warning("every λ diverged by epoch %d; stopping early", epoch)
            break
    weight, bias = step.params()
    return GridRun(
        lambdas=tuple(lambdas),
        weight=weight.detach().cpu(),
        bias=bias.detach().cpu(),
        history={name: torch.stack(values) for name, values in history.items()},
        diverged_epoch=diverged,
    )


class _ScratchStepper:
    """L2 penalty in the loss and a hand-written SGD step, for all λ in one tensor op."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, lam: torch.Tensor, lr: float):
        self.weight = weight.requires_grad_()
        self.bias = bias.requires_grad_()
        self.lam, self.lr = lam, lr

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        # L_g = mean (ŷ − y)²/2 + λ_g/2·‖w_g‖²; summing over g keeps each model's gradient its own.
        loss = squared_loss(predict(xb, self.weight, self.bias), yb) + self.lam / 2 * (self.weight**2).sum(dim=1)
        loss.sum().backward()
        with torch.no_grad():
            for param in (self.weight, self.bias):
                param -= self.lr * param.grad  # w ← w − η·(∇L + λw)
                param.grad = None

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.detach(), self.bias.detach()


class _ConciseStepper:
    """torch.optim.SGD with weight_decay=λ on each model's weight; biases are not decayed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, lambdas: Sequence[float], lr: float):
        self.weights = [w.clone().requires_grad_() for w in weight]
        self.biases = [b.clone().requires_grad_() for b in bias]
        groups = [{"params": [w], "weight_decay": lam} for w, lam in zip(self.weights, lambdas)]
        groups.append({"params": self.biases, "weight_decay": 0.0})
        self.optimizer = torch.optim.SGD(groups, lr=lr)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        weight, bias = torch.stack(self.weights), torch.stack(self.biases)
        squared_loss(predict(xb, weight, bias), yb).sum().backward()
        self.optimizer.step()  # w ← (1 − ηλ)·w − η·∇L
        self.optimizer.zero_grad(set_to_none=True)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.weights).detach(), torch.stack(self.biases).detach()


def ridge_solution(train_set: Split, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimiser of mean (ŷ − y)²/2 + λ/2·‖w‖² with the bias unpenalised (λ = 0: min-norm fit).

    Centring removes b; then w = V·diag(s / (s² + nλ))·Uᵀ·y_c from the SVD X_c = U·diag(s)·Vᵀ.
    """
    x, y = train_set.x.double(), train_set.y.double()
    x_mean, y_mean = x.mean(dim=0), y.mean()
    u, s, vh = torch.linalg.svd(x - x_mean, full_matrices=False)
    tol = s.max() * max(x.shape) * torch.finfo(s.dtype).eps
    shrink = torch.where(s > tol, s / (s**2 + len(y) * lam), torch.zeros_like(s))
    weight = vh.T @ (shrink * (u.T @ (y - y_mean)))
    return weight, y_mean - x_mean @ weight


def kfold_indices(n: int, folds: int, seed: int) -> list[torch.Tensor]:
    """A seeded shuffle of 0..n−1 cut into `folds` near-equal validation folds."""
    if folds > n:
        raise ValueError(f"cannot make {folds} folds from {n} samples")
    perm = torch.randperm(n, generator=seeded_generator(seed, FOLD_STREAM))
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


def pick_lambda(lambdas: Sequence[float], cv_loss: torch.Tensor) -> float:
    """The λ with the lowest mean validation loss (diverged runs never win)."""
    mean = cv_loss.mean(dim=0)
    mean = torch.where(torch.isfinite(mean), mean, torch.full_like(mean, math.inf))
    return float(lambdas[int(mean.argmin())])


def load_dataset(path) -> tuple[Split, Split]:
    """The train and test splits written by the `generate` stage, checked for consistent shapes."""
    from stages.files import StageInputError, load_tensors

    data = load_tensors(path, made_by="generate", required=("x_train", "y_train", "x_test", "y_test"))
    train, test = Split(data["x_train"], data["y_train"]), Split(data["x_test"], data["y_test"])
    for name, split in (("train", train), ("test", test)):
        if split.x.ndim != 2 or split.y.shape != (split.x.shape[0],) or split.x.shape[1] != train.x.shape[1]:
            raise StageInputError(
                f"{path} has a malformed {name} split (x {tuple(split.x.shape)}, y {tuple(split.y.shape)}): "
                "run `dvc repro generate` to make it again"
            )
    return train, test
