"""The datasets, each defined once (wdlab/datasets/definition.py): `REGISTRY` by name. A new dataset is one
`Dataset` in a module of its own, registered below (or with `register`); docs/datasets.md says how."""

from __future__ import annotations

from pathlib import Path

from wdlab.datasets import store
from wdlab.datasets.cifar10 import CIFAR10
from wdlab.datasets.definition import Dataset, ImageSet
from wdlab.datasets.fashion_mnist import FASHION_MNIST
from wdlab.errors import StageError

REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Add `dataset` under its name; a second definition of one name is a mistake."""
    if dataset.name in REGISTRY and REGISTRY[dataset.name] is not dataset:
        raise ValueError(f"a dataset named {dataset.name!r} is registered already")
    REGISTRY[dataset.name] = dataset
    return dataset


def get(name: str) -> Dataset:
    """The dataset called `name`; an unknown name lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise StageError(f"no dataset is called {name!r}: choose one of {', '.join(sorted(REGISTRY))}") from None


def stored(directory: Path | str) -> Dataset:
    """The registered dataset a folder of the download stage holds (data/<study>), by its meta.json."""
    name = store.read_meta(directory)["dataset"]
    if name not in REGISTRY:
        meta = Path(directory) / store.META_FILE
        raise StageError(
            f"{meta} names dataset {name!r}, which no definition registers: "
            f"run `dvc repro {store.made_by(Path(directory))}` to make it again"
        )
    return REGISTRY[name]


def load_stored(directory: Path | str) -> ImageSet:
    """What the download stage wrote (data/<study>), checked against its dataset's definition."""
    return store.load_images(directory, stored(directory))


for _dataset in (CIFAR10, FASHION_MNIST):
    register(_dataset)
