"""Tiny CIFAR-10 inputs for the in-process training tests: the project's params shrunk, and coloured images."""

from __future__ import annotations

import torch

from wdlab.cifar10 import data as cifar_data
from wdlab.settings import Settings, parse_settings
from wdlab.workspace import load_params

CPU = torch.device("cpu")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def tiny_settings(**overrides) -> Settings:
    """The project's params with a net and budget small enough for a test: width 8, 3 epochs, batch 16, float32."""
    raw = load_params()
    study = raw["cifar10"]
    study["data"] |= {"train_subset": 0, "valid_size": 50}
    study["model"] |= {"width": 8}
    study["train"] |= {"epochs": 3, "batch_size": 16, "lr": 0.05, "warmup_fraction": 0.1, "mixed_precision": False}
    study["strengths"] |= {"l2": [0.0, 5e-4], "decoupled": [0.05], "l1": [1e-3], "dropout": [0.5]}
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    return parse_settings(raw)


def coloured_images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class a flat colour of its own plus pixel noise: learnable in an epoch or two, not trivially."""
    colours = torch.randint(
        40, 216, (10, 3), generator=torch.Generator().manual_seed(0)
    ).float()  # same for every split
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = 45 * torch.randn(len(labels), 3, 32, 32, generator=gen)
    images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).round().to(torch.uint8)
    order = torch.randperm(len(labels), generator=gen)
    return images[order], labels[order]


def coloured_splits() -> cifar_data.Splits:
    """Train (250), validation (50) and test (100) splits of coloured_images, with CIFAR-10's class names."""
    (train_x, train_y), (test_x, test_y) = coloured_images(30, seed=1), coloured_images(10, seed=2)
    train_idx, valid_idx = cifar_data.split_indices(train_y, train_subset=0, valid_size=50, seed=0)
    return cifar_data.Splits(
        cifar_data.Split(train_x[train_idx], train_y[train_idx]),
        cifar_data.Split(train_x[valid_idx], train_y[valid_idx]),
        cifar_data.Split(test_x, test_y),
        CLASSES,
    )
