"""Fashion-MNIST (Zalando Research, MIT licence): 60,000 + 10,000 grayscale 28×28 images of 10 clothing classes in
four idx files, from Debian's `dataset-fashion-mnist` when installed, else the official URLs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from wdlab.datasets.definition import Dataset, ImageSet, Resource, StandIn
from wdlab.datasets.idx import idx_bytes, read_idx, write_gzipped
from wdlab.errors import StageError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SIDE = 28
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
# md5 and size of the decompressed files: the official .gz and Debian's recompressed ones hold the same content
RESOURCES = (
    Resource(TRAIN_IMAGES, "f4a8712d7a061bf5bd6d2ca38dc4d50a", 47_040_016),
    Resource(TRAIN_LABELS, "9018921c3c673c538a1fc5bad174d6f9", 60_008),
    Resource(TEST_IMAGES, "8181f5470baa50b63fa0f6fddb340f0a", 7_840_016),
    Resource(TEST_LABELS, "15d484375f8d13e6eb1aabb0c3f46965", 10_008),
)
DEBIAN_COPY = "/usr/share/datasets/fashion-mnist"
MIRRORS = (DEBIAN_COPY, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
INSTALL_HINT = (
    "install Debian's copy (`apt-get install dataset-fashion-mnist`) or give a folder or URL holding the four idx "
    "files (`--source`)"
)
REFETCH = "fetch it again: `python -m wdlab.datasets fetch fashion-mnist --out <folder>`"


def read(folder: Path) -> ImageSet:
    """The four idx files in `folder` (each gzipped or raw) as uint8 images [N, 1, 28, 28] and int64 labels."""
    train_images, train_labels = _read_split(folder, TRAIN_IMAGES, TRAIN_LABELS)
    test_images, test_labels = _read_split(folder, TEST_IMAGES, TEST_LABELS)
    return ImageSet(train_images, train_labels, test_images, test_labels, CLASSES)


def _read_split(folder: Path, images_file: str, labels_file: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = _find(folder, images_file), _find(folder, labels_file)
    images = read_idx(images_path, dims=3, fix=REFETCH)
    labels = read_idx(labels_path, dims=1, fix=REFETCH)
    if images.shape[1:] != (SIDE, SIDE):
        raise StageError(
            f"{images_path} holds {images.shape[1]}×{images.shape[2]} images, not {SIDE}×{SIDE}: {REFETCH}"
        )
    if len(images) != len(labels):
        raise StageError(
            f"{images_path} holds {len(images):,} images but {labels_path} {len(labels):,} labels: "
            f"the files are from different sets; {REFETCH}"
        )
    if len(labels) and labels.max() >= len(CLASSES):
        raise StageError(f"{labels_path} has labels up to {labels.max()}, expected 0 to {len(CLASSES) - 1}: {REFETCH}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _find(folder: Path, name: str) -> Path:
    """`name` in `folder`, raw or gzipped."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise StageError(f"{folder} holds neither {name} nor {name}.gz: {REFETCH}")


# ── the stand-in ──────────────────────────────────────────────────────────────────────────────────


def build_standin(directory: Path | str, train_images: int = 100, test_images: int = 50, seed: int = 0) -> StandIn:
    """Write the four idx files, gzipped, into `directory`: each class a bright silhouette of its own size and
    place on a dark ground, plus pixel noise. Returns the folder and the files' own checksums."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    contents = {}
    splits = ((TRAIN_IMAGES, TRAIN_LABELS, train_images), (TEST_IMAGES, TEST_LABELS, test_images))
    for images_file, labels_file, n in splits:
        labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.uint8)  # every class in every split
        contents[images_file] = idx_bytes(standin_images(labels, rng))
        contents[labels_file] = idx_bytes(labels)
    resources = []
    for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS):
        write_gzipped(directory / f"{name}.gz", contents[name])
        resources.append(Resource(name, hashlib.md5(contents[name]).hexdigest(), len(contents[name])))
    return StandIn(directory, tuple(resources))


def standin_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 28, 28]: a rectangle whose height and width tell the class (tall trousers, wide bags, …)."""
    labels = np.asarray(labels, dtype=np.int64)
    half_height = (4 + 2 * (labels % 5))[:, None, None]  # 4–12 pixels
    half_width = (4 + 4 * (labels // 5) + (labels % 3))[:, None, None]  # 4–10 pixels
    rows, cols = np.abs(np.arange(SIDE) - 13.5)[None, :, None], np.abs(np.arange(SIDE) - 13.5)[None, None, :]
    silhouette = (rows < half_height) & (cols < half_width)
    images = np.where(silhouette, 190.0, 20.0) + rng.normal(0, 30, (len(labels), SIDE, SIDE))
    return np.clip(images, 0, 255).round().astype(np.uint8)


FASHION_MNIST = Dataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    classes=CLASSES,
    channels=1,
    side=SIDE,
    mean=(0.2860,),  # over the 60,000 training images (measured on Debian's copy)
    std=(0.3530,),
    resources=RESOURCES,
    mirrors=MIRRORS,
    read=read,
    build_standin=build_standin,
    install_hint=INSTALL_HINT,
)
