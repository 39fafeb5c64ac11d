"""Linear regression with a regulariser, trained by minibatch SGD over a whole strength grid at once.

Each regulariser (wdlab.regularizers) acts through hooks of one SGD step, for every (seed, strength) model at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from wdlab import regularizers, streams
from wdlab.progress import progress as progress_bar
from wdlab.settings import SyntheticTrain
from wdlab.synthetic.data import Split

log = logging.getLogger("wd-lab.synthetic")


def squared_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of (ŷ − y)²/2 over samples, one value per model: pred [..., n, G], y [..., n] → [..., G]."""
    return ((pred - y[..., None]) ** 2).mean(dim=-2) / 2


def predict(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ŷ = X·w + b for every model: x [..., n, d], weight [..., G, d], bias [..., G] → [..., n, G]."""
    return x @ weight.transpose(-1, -2) + bias[..., None, :]


@dataclass
class GridRun:
    """The trained models of one strength grid on every seed and their per-epoch history (epoch 0 = initialisation)."""

    regularizer: str
    seeds: tuple[int, ...]
    strengths: tuple[float, ...]  # the strengths: λ, or the dropout rate p
    weight: torch.Tensor  # [S, G, d]
    bias: torch.Tensor  # [S, G]
    history: dict[str, torch.Tensor]  # name → [epochs + 1, S, G]: train/… losses, w_norm, zeros (exactly zero weights)
    diverged_epoch: torch.Tensor  # [S, G]: first epoch with a non-finite loss, −1 if none


def batch_orders(n: int, batch_size: int, epochs: int, seeds: Sequence[int]) -> list[list[torch.Tensor]]:
    """Per epoch, each seed's fresh random permutation cut into minibatches [S, B], shared by every λ of that seed.

    ⌊n / batch_size⌋ batches of near-equal size (the first n mod batch_size of them one larger), every sample once
    per epoch: n = 20 in batches of 5 is four of 5, and a CV fold's 16 samples are 6, 5, 5, not 5, 5, 5 and a lone
    sample. A one-sample step under dropout at p = 0.9 (inputs scaled 10×) or input noise at σ = 3 has η‖x̃‖² ≈ 6,
    past plain SGD's stability limit of 2, and blew up every such fold; batches of 5 or 6 stay near 1.2.
    """
    gens = [streams.generator(seed, streams.SYNTHETIC_ORDER) for seed in seeds]
    batches = max(1, n // batch_size)
    return [
        list(torch.stack([torch.randperm(n, generator=gen) for gen in gens]).tensor_split(batches, dim=1))
        for _ in range(epochs)
    ]


def initial_params(
    seeds: Sequence[int], n_models: int, n_features: int, init_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """w ~ N(0, init_std²), b = 0, one draw per seed; every λ of a seed starts from the same w, so λ alone
    explains the differences within a seed."""
    w0 = torch.stack(
        [
            init_std * torch.randn(n_features, generator=streams.generator(seed, streams.SYNTHETIC_INIT))
            for seed in seeds
        ]
    )
    return w0[:, None, :].expand(len(seeds), n_models, n_features).clone(), torch.zeros(len(seeds), n_models)


def train_grid(
    train_set: Split,
    strengths: Sequence[float],
    spec: SyntheticTrain,
    seeds: Sequence[int],
    device: torch.device,
    eval_sets: Mapping[str, Split] | None = None,
    progress: bool = True,
    regularizer: str = regularizers.BASELINE,
) -> GridRun:
    """Minibatch SGD on every (seed, strength) together: one tensor program with leading seed and grid dimensions."""
    eval_sets = {"train": train_set, **(eval_sets or {})}
    eval_sets = {name: Split(s.x.to(device), s.y.to(device)) for name, s in eval_sets.items()}
    x, y = eval_sets["train"]
    if x.shape[0] != len(seeds):
        raise ValueError(f"{x.shape[0]} datasets for {len(seeds)} seeds")
    weight, bias = (t.to(device) for t in initial_params(seeds, len(strengths), x.shape[-1], spec.init_std))
    strength = torch.tensor(list(strengths), dtype=x.dtype, device=device)
    step = stepper(regularizer, spec, weight, bias, strength, seeds)
    history: dict[str, list[torch.Tensor]] = {}
    diverged = torch.full((len(seeds), len(strengths)), -1)
    rows = torch.arange(len(seeds), device=device)[:, None]

    def record(epoch: int, weight: torch.Tensor, bias: torch.Tensor) -> bool:
        with torch.no_grad():
            for name, split in eval_sets.items():
                history.setdefault(f"{name}_loss", []).append(
                    squared_loss(predict(split.x, weight, bias), split.y).cpu()
                )
            history.setdefault("w_norm", []).append(weight.norm(dim=-1).cpu())
            history.setdefault("zeros", []).append((weight == 0).sum(dim=-1).to(weight.dtype).cpu())
        finite = torch.isfinite(history["train_loss"][-1]) & torch.isfinite(history["w_norm"][-1])
        newly = ~finite & (diverged < 0)
        diverged[newly] = epoch
        for s, g in newly.nonzero().tolist():
            log.warning(
                "%s %g, seed %d diverged at epoch %d (non-finite loss): lower lr or the strength",
                regularizer,
                strengths[g],
                seeds[s],
                epoch,
            )
        return bool(finite.any())

    record(0, *step.params())
    orders = batch_orders(y.shape[-1], spec.batch_size, spec.epochs, seeds)
    epochs = (
        progress_bar(
            orders, desc=f"SGD ({regularizer}) on {len(seeds)} seeds × {len(strengths)} strengths", unit="epoch"
        )
        if progress
        else orders
    )
    for epoch, batches in enumerate(epochs, start=1):
        for idx in batches:
            idx = idx.to(device)
            step(x[rows, idx], y[rows, idx])  # each seed's own minibatch: [S, B, d], [S, B]
        if not record(epoch, *step.params()):
            log.warning("every run diverged by epoch %d; stopping early", epoch)
            break
    weight, bias = step.params()
    return GridRun(
        regularizer=regularizer,
        seeds=tuple(seeds),
        strengths=tuple(strengths),
        weight=weight.detach().cpu(),
        bias=bias.detach().cpu(),
        history={name: torch.stack(values) for name, values in history.items()},
        diverged_epoch=diverged,
    )


def stepper(
    regularizer: str,
    spec: SyntheticTrain,
    weight: torch.Tensor,
    bias: torch.Tensor,
    strength: torch.Tensor,
    seeds: Sequence[int],
) -> RegularizedStepper | ConciseStepper:
    """The SGD step of one regulariser for every (seed, strength); `implementation: concise` trains a regulariser that
    torch.optim.SGD's weight_decay expresses (l2) with that optimiser instead."""
    definition = regularizers.get(regularizer)
    if spec.implementation == "concise" and definition.concise_sgd:
        return ConciseStepper(weight, bias, strength.tolist(), spec.lr)
    return RegularizedStepper(definition, weight, bias, strength, spec.lr, seeds)


class RegularizedStepper:
    """A hand-written SGD step for every (seed, strength) in one tensor op, with the regulariser's hooks
    (wdlab.regularizers): the inputs it trains on, a penalty in the loss, a decay before the step, a projection after.

    w ← project(decay(w) − η·∇(L + penalty)), b ← b − η·∇L; the bias is never regularised.
    """

    def __init__(
        self,
        regularizer: regularizers.Regularizer,
        weight: torch.Tensor,
        bias: torch.Tensor,
        strength: torch.Tensor,
        lr: float,
        seeds: Sequence[int],
    ):
        self.regularizer = regularizer
        self.weight = weight.requires_grad_()
        self.bias = bias.requires_grad_()
        self.strength, self.lr = strength, lr
        stream = regularizer.streams[0] if regularizer.streams else None
        self.gens = [streams.generator(seed, stream) for seed in seeds] if stream is not None else []

    def predictions(self, xb: torch.Tensor) -> torch.Tensor:
        """ŷ for every model on its own training inputs: [S, B, G]."""
        xs = self.regularizer.training_inputs(xb, self.strength, self.gens)  # [S, G, B, d] or None
        if xs is None:
            return predict(xb, self.weight, self.bias)
        return (xs * self.weight[:, :, None, :]).sum(dim=-1).transpose(-1, -2) + self.bias[:, None, :]

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        # summing over (s, g) keeps each model's gradient its own
        loss = squared_loss(self.predictions(xb), yb)
        penalty = self.regularizer.loss_penalty(self.weight, self.strength)
        if penalty is not None:
            loss = loss + penalty
        loss.sum().backward()
        with torch.no_grad():
            self.regularizer.decay(self.weight, self.lr, self.strength)
            for param in (self.weight, self.bias):
                param -= self.lr * param.grad
                param.grad = None
            self.regularizer.project(self.weight, self.lr, self.strength)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.detach(), self.bias.detach()


class ConciseStepper:
    """torch.optim.SGD with weight_decay=λ on each λ's weights (all seeds); biases are not decayed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, strengths: Sequence[float], lr: float):
        self.weights = [weight[:, g].clone().requires_grad_() for g in range(len(strengths))]  # [S, d] per λ
        self.bias = bias.clone().requires_grad_()
        groups = [{"params": [w], "weight_decay": strength} for w, strength in zip(self.weights, strengths)]
        groups.append({"params": [self.bias], "weight_decay": 0.0})
        self.optimizer = torch.optim.SGD(groups, lr=lr)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        squared_loss(predict(xb, torch.stack(self.weights, dim=1), self.bias), yb).sum().backward()
        self.optimizer.step()  # w ← (1 − ηλ)·w − η·∇L
        self.optimizer.zero_grad(set_to_none=True)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.weights, dim=1).detach(), self.bias.detach()
