"""The learning rate of a CIFAR-10 run, step by step: what the trainer follows, and what the report computes the
equilibrium angular update under (wdlab.equilibrium). Plain arithmetic: no torch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wdlab.settings import ImageTrain


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def lr_factor(step: int, total_steps: int, spec: ImageTrain) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then hold (constant), linear (onecycle) or cosine decay
    to 0."""
    warmup = round(spec.warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if spec.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if spec.schedule == "onecycle":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def step_lrs(spec: ImageTrain, peak_lr: float, n_train: int) -> list[list[float]]:
    """The lr of every step of a run on `n_train` images, epoch by epoch: [epoch][step in the epoch]."""
    steps = steps_per_epoch(n_train, spec.batch_size)
    total = steps * spec.epochs
    return [[peak_lr * lr_factor(e * steps + s, total, spec) for s in range(steps)] for e in range(spec.epochs)]
