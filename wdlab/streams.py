"""Random streams: every random draw of both studies comes from `seed` in params.yaml through one of these.

Each purpose has a stream of its own, so a change in one (say, more epochs drawing more batch orders)
leaves every other draw as it was.
"""

import torch

# Synthetic study: what a seed changes is the data draw, the initial weights, the batch order and the folds.
SYNTHETIC_DATA, SYNTHETIC_INIT, SYNTHETIC_ORDER, SYNTHETIC_FOLDS = 1, 2, 3, 4
# CIFAR-10: the validation split and training subset, the initial weights, the batch order, the augmentation and
# the fixed subsets the per-epoch curves are measured on.
CIFAR_SPLIT, CIFAR_INIT, CIFAR_ORDER, CIFAR_AUGMENT, CIFAR_CURVES = 11, 12, 13, 14, 15
# A regulariser's own draws (dropout's masks, input noise) come from the streams its definition names
# (`streams` in wdlab/regularizers.py): 5 and up for the synthetic study, 16 and up for CIFAR-10.


def generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU random stream for one purpose, from the one seed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)
