"""Training the CIFAR-10 net with a regulariser: decay groups, the optimiser, the lr schedule, the loop and its record.

What each regulariser does to a run (its optimiser, weight decay, dropout, a hook after each step or on the training
batch) its definition says (wdlab.regularizers). Penalties apply to the conv and linear weights only, unless
`decay_norm_and_bias`. Each step's angle per layer is measured on the way (wdlab.rotation), without changing the run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wdlab import regularizers, streams
from wdlab.cifar10.data import (
    MEAN,
    SPLITS,
    STD,
    Split,
    Splits,
    augment,
    augmentation_draws,
    curve_subsets,
    epoch_batches,
    normalise,
)
from wdlab.cifar10.model import build_net, layer_norms, layer_weights, net_shape, total_norm, zero_fraction
from wdlab.cifar10.schedule import lr_factor, steps_per_epoch
from wdlab.device import Formats, keep_freed_memory
from wdlab.progress import progress
from wdlab.regularizers import Regularizer
from wdlab.rotation import AngularUpdates
from wdlab.settings import ImageStudy, ImageTrain

log = logging.getLogger("wd-lab.cifar10")

EVAL_BATCH = 512


# ── weight decay and the optimiser ────────────────────────────────────────────────────────────────


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Conv and linear weights get λ; biases and BatchNorm scales/shifts get it only when `decay_norm_and_bias`.

    BatchNorm makes the weights before it scale-invariant, so decay there sets their effective learning
    rate; biases and norm parameters have no such role, and are commonly left undecayed.
    """
    decayed, exempt = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_weight_matrix = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decayed if is_weight_matrix or decay_norm_and_bias else exempt).append(param)
    groups = [
        {"name": "decay", "params": decayed, "weight_decay": weight_decay},
        {"name": "no_decay", "params": exempt, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def make_optimizer(model: nn.Module, spec: ImageTrain, regularizer: str, strength: float) -> torch.optim.Optimizer:
    """SGD, or AdamW where the regulariser says so, with its weight_decay on the decayed group."""
    regularizer = regularizers.get(regularizer)
    groups = param_groups(model, regularizer.weight_decay(strength), spec.decay_norm_and_bias)
    if regularizer.optimizer == "adamw":
        # w ← (1 − ηλ)·w − η·m̂ / (√v̂ + ε), with β₁ = momentum
        return torch.optim.AdamW(groups, lr=spec.adamw_lr, betas=(spec.momentum, 0.999))
    # L2 through the gradient: g ← ∇L + λw;  v ← μ·v + g;  w ← w − η·v (Nesterov: w ← w − η·(g + μ·v))
    nesterov = spec.nesterov and spec.momentum > 0
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=nesterov)


# ── training and evaluation ───────────────────────────────────────────────────────────────────────


@dataclass
class RunResult:
    """One trained model and its per-epoch record (epoch 0 = the initial model)."""

    regularizer: str
    strength: float  # λ, or the dropout rate p
    seed: int
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, accuracy, gaps, ‖θ‖
    layer_norms: list[dict[str, float]] = field(default_factory=list)  # per epoch: layer name → ‖W‖
    # per epoch: layer name → the mean angle (radians) its weight turned by per step in that epoch (NaN at epoch 0)
    angular_updates: list[dict[str, float]] = field(default_factory=list)
    diverged_epoch: int | None = None  # first epoch whose loss was NaN/inf
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


@dataclass
class Trainer:
    """What one training run carries from step to step: the model, its optimiser and schedule, the random streams."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    spec: ImageStudy
    formats: Formats
    order_gen: torch.Generator
    augment_gen: torch.Generator
    regularizer: Regularizer
    strength: float
    regularizer_gen: torch.Generator | None = None  # the regulariser's own draws on the training batch (input noise)
    rotation: AngularUpdates | None = None  # measures each layer's angular update per step; None: not measured
    pixels: tuple[tuple[float, ...], tuple[float, ...]] = (MEAN, STD)  # the data's channel mean and std

    @classmethod
    def create(
        cls,
        spec: ImageStudy,
        regularizer: str,
        strength: float,
        seed: int,
        formats: Formats,
        n_train: int,
        architecture: str = "resnet",
        measure_angles: bool = True,
        data: Splits | None = None,
    ) -> Trainer:
        """A fresh model of `architecture` from the init stream, so every run starts from the same weights; the
        regulariser and its strength alone explain the differences. Measuring the angular updates reads the weights
        only: the run is the same with it or without. `data` sizes the net (its channels, side and classes) and
        normalises its pixels by its statistics; CIFAR-10's without it."""
        if formats.device.type == "cpu":
            keep_freed_memory()  # else every step page-faults its activations back in: ~12 % of a CPU step
        definition = regularizers.get(regularizer)
        dropout = definition.dropout(strength)
        stream = definition.streams[1] if definition.streams else None
        if dropout:
            torch.manual_seed(seed * 1_000_003 + stream)  # nn.Dropout draws from the global streams
        inputs = data.net_inputs() if data is not None else {}
        model = build_net(net_shape(spec, architecture) | inputs, seed, dropout)
        model = model.to(formats.device, memory_format=formats.memory_format)
        optimizer = make_optimizer(model, spec.train, regularizer, strength)
        total_steps = steps_per_epoch(n_train, spec.train.batch_size) * spec.train.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, spec.train))
        order_gen = streams.generator(seed, streams.CIFAR_ORDER)
        return cls(
            model,
            optimizer,
            schedule,
            spec,
            formats,
            order_gen,
            streams.generator(seed, streams.CIFAR_AUGMENT),
            definition,
            strength,
            streams.generator(seed, stream) if stream is not None else None,
            AngularUpdates(layer_weights(model)) if measure_angles else None,
            (data.mean, data.std) if data is not None else (MEAN, STD),
        )

    def train_epoch(self, split: Split, progress: tqdm | None = None) -> float:
        """One pass over the shuffled training subset; returns the mean minibatch objective (NaN/inf if it diverged)."""
        spec, device = self.spec, self.formats.device
        self.model.train()
        batches = epoch_batches(len(split.labels), spec.train.batch_size, self.order_gen, device)
        if spec.data.augment:
            flips, offsets = (draw.to(device) for draw in augmentation_draws(*batches.shape, self.augment_gen))
        total = torch.zeros((), device=device)
        for step, idx in enumerate(batches):
            images, labels = split.images[idx], split.labels[idx]
            if spec.data.augment:
                images = augment(images, flips[step], offsets[step])
            inputs = normalise(images, self.formats.memory_format, *self.pixels)
            if self.regularizer_gen is not None:
                inputs = self.regularizer.training_images(inputs, self.strength, self.regularizer_gen)
            with self.formats.autocast():
                logits = self.model(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=spec.train.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.rotation is not None:
                self.rotation.before_step()
            self.optimizer.step()
            self.regularizer.after_step(self.optimizer, self.strength)  # part of the step: L1's soft threshold
            if self.rotation is not None:
                self.rotation.after_step()
            self.schedule.step()
            total += loss.detach()
            if progress is not None:
                progress.update()
        return (total / len(batches)).item()  # one device sync per epoch, not per step


EpochCallback = Callable[[int, dict[str, float], dict[str, float], dict[str, float]], None]


def train(
    splits: Splits,
    spec: ImageStudy,
    regularizer: str,
    strength: float,
    seed: int,
    formats: Formats,
    on_epoch: EpochCallback | None = None,
    architecture: str = "resnet",
    measure_angles: bool = True,
) -> RunResult:
    """Train one model of `architecture` (its training settings: `spec.for_architecture`) with a regulariser at
    `strength` on `splits` (already on the device); a NaN/inf loss stops the run.

    Each epoch is measured on fixed subsets of the splits (`curve_subset` images each), the last one (or the one
    that diverged) on the full splits; `on_epoch(epoch, row, layer_norms, angular_updates)` sees every row as soon as
    it is final. `measure_angles`: record each layer's mean angular update per step (the run is the same without).
    """
    trainer = Trainer.create(
        spec,
        regularizer,
        strength,
        seed,
        formats,
        n_train=len(splits.train.labels),
        architecture=architecture,
        measure_angles=measure_angles,
        data=splits,
    )
    curves = curve_subsets(splits, spec.data.curve_subset, spec.data.split_seed)
    result = RunResult(regularizer, strength, seed)
    name = f"{regularizer} {strength:g} seed {seed}"

    def record(on: Splits, pass_loss: float, angles: dict[str, float]) -> dict[str, float]:
        row, norms = measure(trainer.model, on, formats)
        row |= {"train_pass_loss": pass_loss, "full_sets": on is splits}
        result.history.append(row)
        result.layer_norms.append(norms)
        if trainer.rotation is not None:
            result.angular_updates.append(angles)
        return row

    def publish(epoch: int) -> None:
        if on_epoch is not None:
            angles = result.angular_updates[-1] if result.angular_updates else {}
            on_epoch(epoch, result.history[-1], result.layer_norms[-1], angles)

    record(curves, math.nan, dict.fromkeys(layer_weights(trainer.model), math.nan))  # no step yet
    publish(0)
    steps = steps_per_epoch(len(splits.train.labels), spec.train.batch_size)
    bar = progress(total=spec.train.epochs * steps, desc=name, unit="batch")
    start = time.perf_counter()
    for epoch in range(1, spec.train.epochs + 1):
        pass_loss = trainer.train_epoch(splits.train, bar)
        angles = trainer.rotation.epoch_means() if trainer.rotation is not None else {}
        last = epoch == spec.train.epochs
        row = record(splits if last else curves, pass_loss, angles)
        diverged = not (math.isfinite(pass_loss) and math.isfinite(row["train_loss"]) and math.isfinite(row["w_norm"]))
        if diverged and not last and curves is not splits:  # the run's last row: on the full splits too
            del result.history[-1], result.layer_norms[-1], result.angular_updates[-1:]
            row = record(splits, pass_loss, angles)
        publish(epoch)
        bar.set_postfix(epoch=f"{epoch}/{spec.train.epochs}", test_acc=f"{row['test_accuracy']:.3f}")
        log.info(
            "%s  epoch %2d/%d  train acc %.3f  test acc %.3f  gap %+.3f  ‖θ‖ %.2f  (%.0f s)",
            name,
            epoch,
            spec.train.epochs,
            row["train_accuracy"],
            row["test_accuracy"],
            row["gap_accuracy"],
            row["w_norm"],
            time.perf_counter() - start,
        )
        if diverged:
            result.diverged_epoch = epoch
            log.warning(
                "%s diverged at epoch %d (non-finite loss): stopped this run; lower lr or the strength", name, epoch
            )
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    result.state_dict = {name: value.detach().cpu().contiguous() for name, value in trainer.model.state_dict().items()}
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, formats: Formats, pixels: tuple[tuple[float, ...], tuple[float, ...]] = (MEAN, STD)
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (BatchNorm running statistics), without augmentation; `pixels`:
    the data's channel mean and std."""
    model.eval()
    loss_sum = torch.zeros((), device=formats.device)
    correct = torch.zeros((), device=formats.device, dtype=torch.long)
    for start in range(0, len(split.labels), EVAL_BATCH):
        images, labels = split.images[start : start + EVAL_BATCH], split.labels[start : start + EVAL_BATCH]
        with formats.autocast():
            logits = model(normalise(images, formats.memory_format, *pixels)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train()
    n = len(split.labels)
    loss = loss_sum.item() / n
    return loss, correct.item() / n if math.isfinite(loss) else math.nan  # NaN logits have no meaningful argmax


def measure(model: nn.Module, splits: Splits, formats: Formats) -> tuple[dict[str, float], dict[str, float]]:
    """This epoch's losses, accuracies, generalisation gaps and total ‖θ‖; and ‖W‖ per layer."""
    row: dict[str, float] = {}
    for name in SPLITS:
        row[f"{name}_loss"], row[f"{name}_accuracy"] = evaluate(
            model, getattr(splits, name), formats, (splits.mean, splits.std)
        )
    row["gap_accuracy"] = row["train_accuracy"] - row["test_accuracy"]  # generalisation gap, in accuracy
    row["gap_loss"] = row["test_loss"] - row["train_loss"]  # and in loss
    row["w_norm"] = total_norm(model)
    row["zero_fraction"] = zero_fraction(model)
    return row, layer_norms(model)
