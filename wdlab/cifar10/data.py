"""CIFAR-10 as uint8 tensors on the device: the seeded, class-balanced splits and augmentation as batch ops."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from wdlab import streams
from wdlab.cifar10.schedule import steps_per_epoch
from wdlab.datasets import definition
from wdlab.datasets.cifar10 import MEAN, STD  # CIFAR-10's statistics: the defaults where no dataset is given
from wdlab.errors import StageError
from wdlab.settings import ImageData

if TYPE_CHECKING:
    from wdlab.cifar10.archive import Cifar10

CROP_PADDING = 4  # random crop of the zero-padded image = a random shift of −4…4 pixels
SPLITS = ("train", "valid", "test")


class Split(NamedTuple):
    images: torch.Tensor  # uint8 [N, C, H, W]: [N, 3, 32, 32] for CIFAR-10
    labels: torch.Tensor  # int64 [N]

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


class Splits(NamedTuple):
    train: Split  # the training subset
    valid: Split  # held out from the training set; chooses λ
    test: Split  # the official test set; reported, never used to choose
    classes: tuple[str, ...]
    mean: tuple[float, ...] = MEAN  # the dataset's per-channel statistics, which normalise its pixels
    std: tuple[float, ...] = STD

    def to(self, device: torch.device) -> Splits:
        return self._replace(train=self.train.to(device), valid=self.valid.to(device), test=self.test.to(device))

    def net_inputs(self) -> dict[str, int]:
        """What a net needs from the data (make_net's shape keys): channels, side and classes of these images."""
        channels, side = self.train.images.shape[1:3]
        return {"in_channels": int(channels), "side": int(side), "classes": len(self.classes)}


def load_splits(directory: Path, spec: ImageData) -> Splits:
    """The download stage's dataset (data/<study>), cut into its splits and normalised by its definition's
    statistics."""
    from wdlab.datasets import registry, store

    dataset = registry.stored(directory)
    data = store.load_images(directory, dataset)
    return cut_splits(data, spec, dataset.mean, dataset.std, study=Path(directory).name)


def cut_splits(
    data: Cifar10,
    spec: ImageData,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
    study: str = "cifar10",
) -> Splits:
    """A dataset cut into training subset, validation images and test set (by `split_seed`: the same images for
    every training seed, so seeds differ by training noise alone); `mean` and `std` are its channel statistics
    (a registry dataset's `mean`, `std`; CIFAR-10's by default)."""
    train_idx, valid_idx = split_indices(data.train_labels, spec.train_subset, spec.valid_size, spec.split_seed, study)
    return Splits(
        Split(data.train_images[train_idx], data.train_labels[train_idx]),
        Split(data.train_images[valid_idx], data.train_labels[valid_idx]),
        Split(data.test_images, data.test_labels),
        data.classes,
        mean,
        std,
    )


def curve_subsets(splits: Splits, size: int, seed: int) -> Splits:
    """Fixed class-balanced subsets of `size` images of each split, for the per-epoch curves: cheap to measure every
    epoch, the same images every epoch and every run (0, or a split no larger: the whole split)."""
    gen = streams.generator(seed, streams.CIFAR_CURVES)

    def cut(split: Split) -> Split:
        if size == 0 or size >= len(split.labels):
            return split
        idx = balanced_sample(split.labels.cpu(), size, gen).to(split.labels.device)
        return Split(split.images[idx], split.labels[idx])

    return splits._replace(train=cut(splits.train), valid=cut(splits.valid), test=cut(splits.test))


def split_indices(
    labels: torch.Tensor, train_subset: int, valid_size: int, seed: int, study: str = "cifar10"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced and seeded: `valid_size` held-out images first, then `train_subset` of the rest (0 = all)."""
    needed = valid_size + max(train_subset, 1)
    if needed > len(labels):
        raise StageError(
            f"the training set has {len(labels)} images, too few for {study}.data.valid_size = {valid_size} "
            f"plus {study}.data.train_subset = {train_subset}: lower them in params.yaml"
        )
    gen = streams.generator(seed, streams.CIFAR_SPLIT)
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


def normalise(
    images: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> torch.Tensor:
    """uint8 pixels → float, per channel: x ← (x/255 − mean)/std (CIFAR-10's statistics unless a dataset's given)."""
    return definition.normalise(images, mean, std, memory_format)


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


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A fresh permutation cut into full batches [steps, batch]; the remainder waits for the next shuffle."""
    order = torch.randperm(n, generator=gen)
    steps = steps_per_epoch(n, batch_size)
    return order[: steps * min(batch_size, n)].view(steps, -1).to(device)
