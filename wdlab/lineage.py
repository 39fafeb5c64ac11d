"""Which data a run read, as MLflow records it (`mlflow.log_input`): each study's splits named, digested, and traced
to the recipe that made them.

A digest is a hash of the values themselves, so it changes exactly when the data does (another seed, another
archive, another split), whatever the settings say; a stage computes its datasets once and hands them to every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from wdlab.cifar10.data import Splits
    from wdlab.settings import ImageStudy, SyntheticSettings
    from wdlab.synthetic.data import Split


@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run reads: its name, a digest of its content, the recipe it was made by (`source`: the
    generator's settings and seeds, or the archive's URL and md5 and how it was split) and what the run did with it
    (`context`: training, validation or evaluation)."""

    name: str
    digest: str
    source: Mapping[str, Any]
    context: str = "training"


def content_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the tensors' dtypes, shapes and every byte, 16 hex digits (MLflow's own numpy digest reads only
    the first 10,000 values). ~0.1 s for the 60,000 CIFAR-10 images."""
    digest = hashlib.sha256()
    for tensor in tensors:
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{values.dtype}{tuple(values.shape)}".encode())
        digest.update(memoryview(values.numpy()).cast("B"))
    return digest.hexdigest()[:16]


def synthetic_datasets(
    path: Path, study: SyntheticSettings, train: Split, test: Split | None = None
) -> dict[int | None, list[DatasetInput]]:
    """The synthetic training split (and the test split, if given): every seed's draw (key None, for a stage's run)
    and each seed's alone (key seed, for that seed's runs); the source is the generator's settings and the seed(s)."""
    recipe = {"generator": "wdlab.synthetic.data.make_dataset", "file": str(path)} | study.data.model_dump()
    used = [("train", train, "training")] + ([("test", test, "evaluation")] if test is not None else [])

    def inputs(seeds: Mapping[str, Any], s: slice) -> list[DatasetInput]:
        return [
            DatasetInput(
                f"synthetic-{name}", content_digest(split.x[s], split.y[s]), recipe | {"split": name} | seeds, context
            )
            for name, split, context in used
        ]

    every = {None: inputs({"seeds": list(study.seeds)}, slice(None))}
    return every | {seed: inputs({"seed": seed}, slice(s, s + 1)) for s, seed in enumerate(study.seeds)}


def image_datasets(path: Path, study: ImageStudy, splits: Splits) -> list[DatasetInput]:
    """An image study's splits a run trains on, validates on and is tested on (the same for every seed); the source
    is the dataset (and its archive's URL and md5 where params.yaml gives them) and, for the training images, how
    they were split."""
    given = {"archive_url": study.download.url, "archive_md5": study.download.md5}
    archive = {"dataset": study.dataset} | {k: v for k, v in given.items() if v is not None} | {"file": str(path)}
    cut = {key: getattr(study.data, key) for key in ("split_seed", "train_subset", "valid_size")}
    contexts: Sequence[tuple[str, str, Mapping[str, Any]]] = (
        ("train", "training", cut),
        ("valid", "validation", cut),
        ("test", "evaluation", {}),
    )
    return [
        DatasetInput(
            f"{study.dataset}-{name}", content_digest(*getattr(splits, name)), archive | {"split": name} | how, context
        )
        for name, context, how in contexts
    ]
