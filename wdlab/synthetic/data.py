"""The synthetic data: y = X·w* + b* + ε with X ~ N(0, 1), few samples and many features, one draw per seed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from wdlab import streams
from wdlab.errors import StageInputError
from wdlab.files import load_tensors
from wdlab.settings import SyntheticData


class Split(NamedTuple):
    x: torch.Tensor  # [S, n, d]: one dataset per seed
    y: torch.Tensor  # [S, n]

    def seed(self, s: int) -> Split:
        """Seed s's dataset alone, still with a leading seed axis of length 1."""
        return Split(self.x[s : s + 1], self.y[s : s + 1])


def make_dataset(spec: SyntheticData, seeds: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per seed, y = X·w* + b* + ε with X ~ N(0, 1) and ε ~ N(0, noise_std²); train and test from its one stream."""
    n = spec.n_train + spec.n_test
    true_w = torch.full((spec.n_features,), spec.true_w)
    draws = []
    for seed in seeds:
        gen = streams.generator(seed, streams.SYNTHETIC_DATA)
        x = torch.randn(n, spec.n_features, generator=gen)
        draws.append((x, x @ true_w + spec.true_b + spec.noise_std * torch.randn(n, generator=gen)))
    x, y = torch.stack([x for x, _ in draws]), torch.stack([y for _, y in draws])
    return {
        "seeds": torch.tensor(list(seeds)),
        "x_train": x[:, : spec.n_train].contiguous(),
        "y_train": y[:, : spec.n_train].contiguous(),
        "x_test": x[:, spec.n_train :].contiguous(),
        "y_test": y[:, spec.n_train :].contiguous(),
        "true_w": true_w,
        "true_b": torch.tensor(spec.true_b),
    }


def load_dataset(path: Path, seeds: Sequence[int]) -> tuple[Split, Split]:
    """The train and test splits the `generate` stage wrote for `seeds`, checked for consistent shapes."""
    data = load_tensors(path, made_by="generate", required=("x_train", "y_train", "x_test", "y_test"))
    train, test = Split(data["x_train"], data["y_train"]), Split(data["x_test"], data["y_test"])
    for name, split in (("train", train), ("test", test)):
        if split.x.ndim != 3 or split.y.shape != split.x.shape[:2] or split.x.shape[::2] != train.x.shape[::2]:
            raise StageInputError(
                f"{path} has a malformed {name} split (x {tuple(split.x.shape)}, y {tuple(split.y.shape)}): "
                "run `dvc repro generate` to make it again"
            )
    held = data["seeds"].tolist() if "seeds" in data else None
    if held != list(seeds):
        raise StageInputError(f"{path} holds seeds {held}, not synthetic.seeds {list(seeds)}: run `dvc repro generate`")
    return train, test
