"""The synthetic data: y = X·w* + b* + ε with X ~ N(0, 1), few samples and many features."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from wdlab import streams
from wdlab.errors import StageInputError
from wdlab.files import load_tensors
from wdlab.settings import SyntheticData


class Split(NamedTuple):
    x: torch.Tensor  # [n, d]
    y: torch.Tensor  # [n]


def make_dataset(spec: SyntheticData, seed: int) -> dict[str, torch.Tensor]:
    """y = X·w* + b* + ε with X ~ N(0, 1) and ε ~ N(0, noise_std²); train and test from one stream."""
    gen = streams.generator(seed, streams.SYNTHETIC_DATA)
    n = spec.n_train + spec.n_test
    x = torch.randn(n, spec.n_features, generator=gen)
    true_w = torch.full((spec.n_features,), spec.true_w)
    y = x @ true_w + spec.true_b + spec.noise_std * torch.randn(n, generator=gen)
    return {
        "x_train": x[: spec.n_train].contiguous(),
        "y_train": y[: spec.n_train].contiguous(),
        "x_test": x[spec.n_train :].contiguous(),
        "y_test": y[spec.n_train :].contiguous(),
        "true_w": true_w,
        "true_b": torch.tensor(spec.true_b),
    }


def load_dataset(path: Path) -> tuple[Split, Split]:
    """The train and test splits written by the `generate` stage, checked for consistent shapes."""
    data = load_tensors(path, made_by="generate", required=("x_train", "y_train", "x_test", "y_test"))
    train, test = Split(data["x_train"], data["y_train"]), Split(data["x_test"], data["y_test"])
    for name, split in (("train", train), ("test", test)):
        if split.x.ndim != 2 or split.y.shape != (split.x.shape[0],) or split.x.shape[1] != train.x.shape[1]:
            raise StageInputError(
                f"{path} has a malformed {name} split (x {tuple(split.x.shape)}, y {tuple(split.y.shape)}): "
                "run `dvc repro generate` to make it again"
            )
    return train, test
