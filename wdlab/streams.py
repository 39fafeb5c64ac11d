"""Random streams: every random draw of both studies comes from `seed` in params.yaml through one of these.

Each purpose has a stream of its own, so a change in one (say, more epochs drawing more batch orders)
leaves every other draw as it was.
"""

import torch

# Synthetic study: what a seed changes is the data draw, the initial weights, the batch order, the folds and
# the dropout masks.
SYNTHETIC_DATA, SYNTHETIC_INIT, SYNTHETIC_ORDER, SYNTHETIC_FOLDS, SYNTHETIC_DROPOUT = 1, 2, 3, 4, 5
# CIFAR-10: the validation split and training subset, the initial weights, the batch order, the augmentation,
# the fixed subsets the per-epoch curves are measured on, and the dropout masks.
CIFAR_SPLIT, CIFAR_INIT, CIFAR_ORDER, CIFAR_AUGMENT, CIFAR_CURVES, CIFAR_DROPOUT = 11, 12, 13, 14, 15, 16


def generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU random stream for one purpose, from the one seed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)
