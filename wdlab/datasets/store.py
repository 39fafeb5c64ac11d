"""An image study's dataset as the download stage writes it (data/<study>/): train.pt and test.pt ({"images",
"labels"}: uint8 [N, C, H, W] and int64 [N], loadable with weights_only=True) and meta.json (the dataset's registry
name, its classes, counts and the checksums of the files it was read from). Readers check every file against the
dataset's definition, so a damaged one names itself and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wdlab.datasets.definition import Dataset, ImageSet
from wdlab.errors import StageInputError
from wdlab.files import load_tensors, read_json, save_tensors, write_json

TRAIN_FILE, TEST_FILE, META_FILE = "train.pt", "test.pt", "meta.json"
DOWNLOAD_STAGE = "download"  # foreach over the image studies: download@<study> writes data/<study>


def made_by(directory: Path) -> str:
    """The stage that writes `directory` (data/<study>): download@<study>."""
    return f"{DOWNLOAD_STAGE}@{Path(directory).name}"


def save_images(data: ImageSet, directory: Path | str, dataset: str, source: dict[str, Any]) -> None:
    """Write the dataset's tensors and meta.json; `source` says what they were read from (checksums, no URL: the
    same bytes from a mirror must give the same output, so DVC sees no change)."""
    directory = Path(directory)
    save_tensors(directory / TRAIN_FILE, {"images": data.train_images, "labels": data.train_labels})
    save_tensors(directory / TEST_FILE, {"images": data.test_images, "labels": data.test_labels})
    meta = {
        "dataset": dataset,  # its registry name: wdlab.datasets.registry.stored finds the definition
        "classes": list(data.classes),
        **source,
        "n_train": len(data.train_labels),
        "n_test": len(data.test_labels),
    }
    write_json(directory / META_FILE, meta)


def read_meta(directory: Path | str) -> dict[str, Any]:
    """meta.json of a stored dataset; one written before it named its dataset is CIFAR-10's."""
    path = Path(directory) / META_FILE
    meta = read_json(path, made_by(Path(directory)))
    if not isinstance(meta, dict):
        raise StageInputError(f"{path} is not a mapping: run `dvc repro {made_by(Path(directory))}` to make it again")
    return {"dataset": "cifar10"} | meta


def load_images(directory: Path | str, dataset: Dataset) -> ImageSet:
    """Read what the download stage wrote of `dataset`; a missing, truncated or misshapen file names itself and the
    fix."""
    directory = Path(directory)
    fix = f"run `dvc repro {made_by(directory)}` to make it again"
    train_images, train_labels = _load_split(directory / TRAIN_FILE, dataset, fix)
    test_images, test_labels = _load_split(directory / TEST_FILE, dataset, fix)
    classes = read_meta(directory).get("classes")
    if not (isinstance(classes, list) and tuple(classes) == dataset.classes):
        raise StageInputError(
            f"{directory / META_FILE} lacks {dataset.title}'s {len(dataset.classes)} class names: {fix}"
        )
    return ImageSet(train_images, train_labels, test_images, test_labels, dataset.classes)


def _load_split(path: Path, dataset: Dataset, fix: str) -> tuple[torch.Tensor, torch.Tensor]:
    split = load_tensors(path, made_by(path.parent), required=("images", "labels"))
    images, labels = split["images"], split["labels"]
    well_formed = (
        isinstance(images, torch.Tensor)
        and images.dtype == torch.uint8
        and images.ndim == 4
        and tuple(images.shape[1:]) == dataset.image_shape
        and isinstance(labels, torch.Tensor)
        and labels.dtype == torch.int64
        and labels.shape == images.shape[:1]
    )
    if not well_formed:
        raise StageInputError(
            f"{path} holds images {_describe(images)} and labels {_describe(labels)}, expected uint8 "
            f"{dataset.serving_shape} and int64 [N]: {fix}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(dataset.classes)):
        raise StageInputError(f"{path} has labels outside 0–{len(dataset.classes) - 1}: {fix}")
    return images, labels


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    return type(value).__name__
