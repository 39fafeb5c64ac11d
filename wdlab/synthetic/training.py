"""Linear regression with weight decay, trained by minibatch SGD over a whole λ grid at once."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from wdlab import streams
from wdlab.settings import SyntheticTrain
from wdlab.synthetic.data import Split

log = logging.getLogger("wd-lab.linreg")

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
    gen = streams.generator(seed, streams.SYNTHETIC_ORDER)
    return [list(torch.randperm(n, generator=gen).split(batch_size)) for _ in range(epochs)]


def initial_params(n_models: int, n_features: int, init_std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w ~ N(0, init_std²), b = 0; every λ starts from the same w, so λ alone explains the differences."""
    w0 = init_std * torch.randn(n_features, generator=streams.generator(seed, streams.SYNTHETIC_INIT))
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
    step = ScratchStepper(weight, bias, lam, spec.lr) if spec.implementation == "scratch" else ConciseStepper(
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


class ScratchStepper:
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


class ConciseStepper:
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
