"""CIFAR-10 with weight decay: a small residual net, the dataset as one tensor on the device, training and evaluation."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stages.common import StageError, seeded_generator
from stages.settings import CifarData, CifarSettings, CifarTrain

log = logging.getLogger("wd-lab.cifar")

MEAN = (0.4914, 0.4822, 0.4465)  # per channel over the training set, pixels in [0, 1]
STD = (0.2470, 0.2435, 0.2616)
CROP_PADDING = 4  # random crop of the zero-padded image = a random shift of −4…4 pixels
LOGIT_SCALE = 0.125  # as in ResNet-9: keeps the initial logits small, so early steps stay stable
EVAL_BATCH = 512
SPLITS = ("train", "valid", "test")

# Independent random streams drawn from the one seed in params.yaml.
SPLIT_STREAM, INIT_STREAM, ORDER_STREAM, AUGMENT_STREAM = 11, 12, 13, 14


# ── data: uint8 tensors on the device ─────────────────────────────────────────────────────────────


class Split(NamedTuple):
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


class Splits(NamedTuple):
    train: Split  # the training subset
    valid: Split  # held out from the training set; chooses λ
    test: Split  # the official test set; reported, never used to choose
    classes: tuple[str, ...]

    def to(self, device: torch.device) -> Splits:
        return Splits(self.train.to(device), self.valid.to(device), self.test.to(device), self.classes)


def load_splits(directory: Path, spec: CifarData, seed: int) -> Splits:
    """The download stage's dataset cut into training subset, validation images and test set."""
    from stages.cifar_archive import load_cifar10

    data = load_cifar10(directory)
    train_idx, valid_idx = split_indices(data.train_labels, spec.train_subset, spec.valid_size, seed)
    return Splits(
        Split(data.train_images[train_idx], data.train_labels[train_idx]),
        Split(data.train_images[valid_idx], data.train_labels[valid_idx]),
        Split(data.test_images, data.test_labels),
        data.classes,
    )


def split_indices(labels: torch.Tensor, train_subset: int, valid_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced and seeded: `valid_size` held-out images first, then `train_subset` of the rest (0 = all)."""
    needed = valid_size + max(train_subset, 1)
    if needed > len(labels):
        raise StageError(
            f"the training set has {len(labels)} images, too few for cifar10.data.valid_size = {valid_size} "
            f"plus cifar10.data.train_subset = {train_subset}: lower them in params.yaml"
        )
    gen = seeded_generator(seed, SPLIT_STREAM)
    valid = balanced_sample(labels, valid_size, gen)
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[valid] = False
    rest = rest.nonzero().flatten()
    train = rest if train_subset == 0 else rest[balanced_sample(labels[rest], train_subset, gen)]
    return train, valid


def balanced_sample(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """`size` random indices, equally many per class where the classes allow: round-robin over shuffled classes."""
    n = len(labels)
    shuffled = torch.randperm(n, generator=gen)
    grouped_labels, grouped = labels[shuffled].sort(stable=True)  # class by class, shuffled within each class
    counts = torch.bincount(grouped_labels)
    rank = torch.empty(n, dtype=torch.long)
    rank[grouped] = torch.arange(n) - (counts.cumsum(0) - counts)[grouped_labels]  # position within its class
    take = torch.argsort(rank * n + torch.arange(n))[:size]  # every class's first image, then every class's second, …
    return shuffled[take].sort().values


def normalise(images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 pixels → float, per channel: x ← (x/255 − mean)/std."""
    mean, std = _pixel_stats(images.device)
    return ((images.float() - mean) / std).contiguous(memory_format=memory_format)


@functools.cache
def _pixel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std in 0–255 pixel units, made once per device (a copy per batch would stall a GPU)."""
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255, torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)


def augmentation_draws(steps: int, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole epoch's random flips [steps, B] and crop offsets [steps, 2, B], drawn at once from the seeded stream."""
    flips = torch.rand(steps, batch, generator=gen) < 0.5
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (steps, 2, batch), generator=gen)
    return flips, offsets


def augment(images: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and random crop (zero padding 4) of a whole uint8 batch, as tensor ops."""
    return crop(flip(images, flips), offsets, CROP_PADDING)


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left–right the images where `mask` [B] is true."""
    return torch.where(mask[:, None, None, None], images.flip(3), images)


def crop(images: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image's window at (top, left) = offsets[:, b] of its zero-padded copy, same size as the input.

    out[b, c, i, j] = padded[b, c, top_b + i, left_b + j], one gather for the whole batch.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = offsets[0][:, None] + torch.arange(height, device=device)  # [B, H]
    cols = offsets[1][:, None] + torch.arange(width, device=device)  # [B, W]
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A fresh permutation cut into full batches [steps, batch]; the remainder waits for the next shuffle."""
    order = torch.randperm(n, generator=gen)
    steps = steps_per_epoch(n, batch_size)
    return order[: steps * min(batch_size, n)].view(steps, -1).to(device)


# ── the model ─────────────────────────────────────────────────────────────────────────────────────


class ConvBlock(nn.Module):
    """3×3 conv → BatchNorm → ReLU, then 2×2 max-pooling when `pool`."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(x, 2) if self.pool else x


class Residual(nn.Module):
    """x + f(x), with f two conv blocks of the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.a = ConvBlock(channels, channels)
        self.b = ConvBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class ResNet(nn.Module):
    """The ResNet-9 layout of the fast DAWNBench CIFAR-10 entries, with `width` channels in its first layer.

    prep → layer1 (pool, residual) → layer2 (pool) → layer3 (pool, residual) → global max-pool → linear;
    channels w, 2w, 4w, 8w at 32, 16, 8, 4 pixels. Width 64 is the original ResNet-9 (94% with a long schedule).
    """

    def __init__(self, width: int, classes: int = 10):
        super().__init__()
        self.prep = ConvBlock(3, width)
        self.layer1 = ConvBlock(width, 2 * width, pool=True)
        self.res1 = Residual(2 * width)
        self.layer2 = ConvBlock(2 * width, 4 * width, pool=True)
        self.layer3 = ConvBlock(4 * width, 8 * width, pool=True)
        self.res3 = Residual(8 * width)
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(self.layer1(self.prep(x)))
        x = self.res3(self.layer3(self.layer2(x)))
        return self.head(x.amax(dim=(2, 3))) * LOGIT_SCALE


def build_model(width: int, seed: int) -> ResNet:
    """He-initialised from the init stream: every λ starts from the same weights, so λ alone explains the differences."""
    model = ResNet(width)
    gen = seeded_generator(seed, INIT_STREAM)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)  # std = √(2 / fan_in)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def layer_norms(model: nn.Module) -> dict[str, float]:
    """‖W‖₂ of each conv and linear layer's weight, by layer name (e.g. 'res1.a', 'head')."""
    return {
        name.removesuffix(".conv"): module.weight.detach().float().norm().item()
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def total_norm(model: nn.Module) -> float:
    """‖θ‖₂ over every parameter of the model (weights, biases, BatchNorm scales and shifts)."""
    return torch.stack([p.detach().float().norm() for p in model.parameters()]).norm().item()


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


def make_optimizer(model: nn.Module, spec: CifarTrain, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, spec.decay_norm_and_bias)
    if spec.optimizer == "sgd":
        # L2 through the gradient: g ← ∇L + λw;  v ← μ·v + g;  w ← w − η·v (Nesterov: w ← w − η·(g + μ·v))
        nesterov = spec.nesterov and spec.momentum > 0
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=nesterov)
    # Decoupled: w ← (1 − ηλ)·w − η·m̂ / (√v̂ + ε), with β₁ = momentum
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(spec.momentum, 0.999))


def lr_factor(step: int, total_steps: int, spec: CifarTrain) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then hold (constant), linear (onecycle) or cosine decay to 0."""
    warmup = round(spec.warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if spec.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if spec.schedule == "onecycle":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ── device formats ────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Formats:
    """How tensors are laid out and computed on the device: channels_last and bf16 autocast where they pay."""

    device: torch.device
    memory_format: torch.memory_format
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        precision = "bf16 autocast" if self.autocast_dtype is not None else "float32"
        layout = "channels_last" if self.memory_format == torch.channels_last else "NCHW"
        return f"{precision}, {layout}"


def device_formats(device: torch.device, mixed_precision: bool) -> Formats:
    """CUDA and CPU: channels_last, and bf16 autocast where the hardware has bf16; MPS: plain float32 NCHW."""
    channels_last = device.type in ("cuda", "cpu")
    bf16 = mixed_precision and (
        (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_has_bf16())
    )
    return Formats(device, torch.channels_last if channels_last else torch.contiguous_format, torch.bfloat16 if bf16 else None)


def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX); without them bf16 on the CPU is emulated and slow."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


# ── training and evaluation ───────────────────────────────────────────────────────────────────────


@dataclass
class RunResult:
    """One trained model and its per-epoch record (epoch 0 = the initial model)."""

    weight_decay: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, accuracy, gaps, ‖θ‖
    layer_norms: list[dict[str, float]] = field(default_factory=list)  # per epoch: layer name → ‖W‖
    diverged_epoch: int | None = None  # first epoch whose loss was NaN/inf
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def train(splits: Splits, spec: CifarSettings, weight_decay: float, seed: int, formats: Formats) -> RunResult:
    """Train one model with weight decay λ on `splits` (already on the device); a NaN/inf loss stops the run."""
    model = build_model(spec.model.width, seed).to(formats.device, memory_format=formats.memory_format)
    optimizer = make_optimizer(model, spec.train, weight_decay)
    total_steps = steps_per_epoch(len(splits.train.labels), spec.train.batch_size) * spec.train.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, spec.train))
    order_gen, augment_gen = seeded_generator(seed, ORDER_STREAM), seeded_generator(seed, AUGMENT_STREAM)

    result = RunResult(weight_decay)
    record(result, model, splits, formats)
    start = time.perf_counter()
    for epoch in range(1, spec.train.epochs + 1):
        objective = train_epoch(model, optimizer, schedule, splits.train, spec, order_gen, augment_gen, formats)
        row = record(result, model, splits, formats)
        log.info(
            "λ=%-7g epoch %2d/%d  train acc %.3f  test acc %.3f  gap %+.3f  ‖θ‖ %.2f  (%.0f s)",
            weight_decay, epoch, spec.train.epochs, row["train_accuracy"], row["test_accuracy"],
            row["gap_accuracy"], row["w_norm"], time.perf_counter() - start,
        )
        if not (math.isfinite(objective) and math.isfinite(row["train_loss"]) and math.isfinite(row["w_norm"])):
            result.diverged_epoch = epoch
            log.warning("λ=%g diverged at epoch %d (non-finite loss): stopped this run; lower lr or λ", weight_decay, epoch)
            break
    result.seconds = time.perf_counter() - start
    result.state_dict = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    return result


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    train_split: Split,
    spec: CifarSettings,
    order_gen: torch.Generator,
    augment_gen: torch.Generator,
    formats: Formats,
) -> float:
    """One pass over the shuffled training subset; returns the mean minibatch objective (NaN/inf if it diverged)."""
    model.train()
    batches = epoch_batches(len(train_split.labels), spec.train.batch_size, order_gen, formats.device)
    if spec.data.augment:
        flips, offsets = (draw.to(formats.device) for draw in augmentation_draws(*batches.shape, augment_gen))
    total = torch.zeros((), device=formats.device)
    for step, idx in enumerate(batches):
        images, labels = train_split.images[idx], train_split.labels[idx]
        if spec.data.augment:
            images = augment(images, flips[step], offsets[step])
        with formats.autocast():
            logits = model(normalise(images, formats.memory_format))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=spec.train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.detach()
    return (total / len(batches)).item()  # one device sync per epoch, not per step


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, formats: Formats) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (BatchNorm running statistics), without augmentation."""
    model.eval()
    loss_sum = torch.zeros((), device=formats.device)
    correct = torch.zeros((), device=formats.device, dtype=torch.long)
    for start in range(0, len(split.labels), EVAL_BATCH):
        images, labels = split.images[start : start + EVAL_BATCH], split.labels[start : start + EVAL_BATCH]
        with formats.autocast():
            logits = model(normalise(images, formats.memory_format)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train()
    n = len(split.labels)
    loss = loss_sum.item() / n
    return loss, correct.item() / n if math.isfinite(loss) else math.nan  # NaN logits have no meaningful argmax


def record(result: RunResult, model: nn.Module, splits: Splits, formats: Formats) -> dict[str, float]:
    """Append this epoch's losses, accuracies, generalisation gaps and weight norms to `result`."""
    row: dict[str, float] = {}
    for name in SPLITS:
        row[f"{name}_loss"], row[f"{name}_accuracy"] = evaluate(model, getattr(splits, name), formats)
    row["gap_accuracy"] = row["train_accuracy"] - row["test_accuracy"]  # generalisation gap, in accuracy
    row["gap_loss"] = row["test_loss"] - row["train_loss"]  # and in loss
    row["w_norm"] = total_norm(model)
    result.history.append(row)
    result.layer_norms.append(layer_norms(model))
    return row
