"""What a dataset definition is: its files with their checksums, where to find them, how to read them into uint8
tensors [N, C, H, W], its normalisation and a generated stand-in; everything downstream asks it for its shape."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch


class ImageSet(NamedTuple):
    """A dataset as tensors; unpacks as (train_images, train_labels, test_images, test_labels, classes)."""

    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N], values 0 … classes − 1
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]  # in label order


class Resource(NamedTuple):
    """One file of a dataset, identified by its content: md5 and size of the file as the reader takes it. A source
    may hold it gzipped (`file`.gz, tried first when `gzipped`): the decompressed bytes are what is verified, so an
    official archive and a recompressed copy (Debian's) both pass."""

    file: str
    md5: str
    size: int
    gzipped: bool = True


class StandIn(NamedTuple):
    """A generated stand-in in the dataset's own format: the folder holding its files and their declared checksums,
    which take the place of the real files' in `fetch`."""

    folder: Path
    resources: tuple[Resource, ...]


@dataclass(frozen=True)
class Dataset:
    """One dataset, declared once. `read` takes a folder holding `resources` (as `fetch` writes it); `build_standin`
    writes a small stand-in into a folder (keyword arguments: sizes, seed)."""

    name: str  # on the command line, in file names and in MLflow
    title: str  # in prose
    classes: tuple[str, ...]
    channels: int
    side: int  # images are side × side pixels
    mean: tuple[float, ...]  # per channel over the training set, pixels in [0, 1]
    std: tuple[float, ...]
    resources: tuple[Resource, ...]
    mirrors: tuple[str, ...]  # folders, file:// or http(s):// bases holding `resources`, tried in order
    read: Callable[[Path], ImageSet]
    build_standin: Callable[..., StandIn]
    install_hint: str  # how a user gets the files when no mirror answers

    def __post_init__(self) -> None:
        if not (len(self.mean) == len(self.std) == self.channels):
            raise ValueError(f"{self.name}: mean and std need one value per channel ({self.channels})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.side, self.side)

    @property
    def chance(self) -> float:
        """The accuracy of guessing on balanced classes: 1 / classes."""
        return 1 / len(self.classes)

    @property
    def serving_shape(self) -> list[int]:
        """The input a served model takes: uint8 [N, C, H, W], N free (−1, as MLflow signatures write it)."""
        return [-1, *self.image_shape]

    def net_inputs(self) -> dict[str, Any]:
        """What a net needs from the data (wdlab.cifar10.model.make_net's shape keys)."""
        return {"in_channels": self.channels, "side": self.side, "classes": len(self.classes)}

    def source_record(self, archive_md5: str | None = None) -> dict[str, Any]:
        """What a study's page says of its data: name, title, the archive's md5 where one names the data, and
        whether the files are the official ones (content verified against this definition, or an archive whose md5
        is the official archive's)."""
        official = archive_md5 is None or archive_md5.lower() in {resource.md5 for resource in self.resources}
        return {
            "name": self.name,
            "title": self.title,
            "archive_md5": archive_md5,
            "official": official,
            "chance": self.chance,
        }

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels → float, per channel, by this dataset's statistics."""
        return normalise(images, self.mean, self.std)

    def check(self, data: ImageSet, where: str) -> ImageSet:
        """`data` as its reader must return it; anything else is a bug in the reader, named with `where`."""
        for split, images, labels in (
            ("train", data.train_images, data.train_labels),
            ("test", data.test_images, data.test_labels),
        ):
            if not (
                images.dtype == torch.uint8
                and tuple(images.shape[1:]) == self.image_shape
                and labels.dtype == torch.int64
                and labels.shape == images.shape[:1]
            ):
                raise ValueError(
                    f"{where}: the {self.name} reader gave {split} images {images.dtype} {list(images.shape)} and "
                    f"labels {labels.dtype} {list(labels.shape)}, expected uint8 {self.serving_shape} and int64 [N]"
                )
        if tuple(data.classes) != self.classes:
            raise ValueError(f"{where}: the {self.name} reader gave classes {data.classes}, expected {self.classes}")
        return data


def normalise(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 pixels → float, per channel: x ← (x/255 − mean)/std."""
    mean_pixels, std_pixels = _pixel_stats(images.device, mean, std)
    return ((images.float() - mean_pixels) / std_pixels).contiguous(memory_format=memory_format)


@functools.cache
def _pixel_stats(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std in 0–255 pixel units, made once per device (a copy per batch would stall a GPU)."""
    return (
        torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255,
        torch.tensor(std, device=device).view(1, -1, 1, 1) * 255,
    )
