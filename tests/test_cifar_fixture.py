"""The generated CIFAR-10 stand-ins (wdlab/cifar10/standin.py): reproducible bytes, the requested sizes, and a "ci"
kind that behaves like CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.ci_profile import profile
from wdlab.cifar10.archive import read_archive
from wdlab.cifar10.data import Split, Splits, split_indices
from wdlab.cifar10.standin import DIFFICULTIES, TEST_BATCH, TRAIN_BATCHES, build_archive, make_batches
from wdlab.cifar10.training import train
from wdlab.device import device_formats
from wdlab.settings import parse_settings


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_same_arguments_same_bytes_and_every_class_in_every_batch(tmp_path, difficulty):
    first = build_archive(tmp_path / "a", 30, seed=3, difficulty=difficulty)
    again = build_archive(tmp_path / "b", 30, seed=3, difficulty=difficulty)
    other = build_archive(tmp_path / "c", 30, seed=4, difficulty=difficulty)
    assert first.md5 == again.md5 != other.md5
    for name, batch in make_batches(30, seed=3, difficulty=difficulty).items():
        if name in (*TRAIN_BATCHES, TEST_BATCH):
            assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (30, 3072)
            assert np.bincount(batch[b"labels"], minlength=10).tolist() == [3] * 10


def test_the_test_batch_can_be_larger_and_the_kinds_differ(tmp_path):
    batches = make_batches(20, seed=0, difficulty="ci", test_images=70)
    assert [len(batches[name][b"labels"]) for name in (*TRAIN_BATCHES, TEST_BATCH)] == [20] * 5 + [70]
    data = read_archive(build_archive(tmp_path, 20, difficulty="ci", test_images=70).path)
    assert data.train_images.shape == (100, 3, 32, 32) and data.test_images.shape == (70, 3, 32, 32)
    easy = make_batches(20, seed=0)
    assert not np.array_equal(easy[TEST_BATCH][b"data"], make_batches(20, seed=0, difficulty="ci")[TEST_BATCH][b"data"])
    with pytest.raises(ValueError, match="difficulty"):
        make_batches(20, difficulty="hard")


@pytest.mark.slow
def test_the_ci_stand_in_overfits_like_cifar_and_shuffled_labels_give_chance(tmp_path: Path):
    """The CI profile's net and budget on the CI profile's archive: neither trivial nor hopeless, a clear
    generalisation gap at λ = 0, and chance when the training labels are shuffled against the images."""
    data = read_archive(build_archive(tmp_path, 120, difficulty="ci", test_images=600).path)
    settings = parse_settings(profile.profile_params())
    spec = settings.cifar10
    formats = device_formats(torch.device("cpu"), mixed_precision=False)

    def final(train_labels: torch.Tensor) -> dict[str, float]:
        train_idx, valid_idx = split_indices(
            train_labels, spec.data.train_subset, spec.data.valid_size, spec.data.split_seed
        )
        splits = Splits(
            Split(data.train_images[train_idx], train_labels[train_idx]),
            Split(data.train_images[valid_idx], train_labels[valid_idx]),
            Split(data.test_images, data.test_labels),
            data.classes,
        )
        return train(splits, spec, "l2", 0.0, spec.seeds[0], formats).final

    honest = final(data.train_labels)
    assert 0.45 < honest["test_accuracy"] < 0.75, "measured 0.57–0.60 over training seeds"
    assert honest["gap_accuracy"] > 0.2, "measured 0.34–0.41: λ = 0 overfits"
    shuffled = final(
        data.train_labels[torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))]
    )
    assert shuffled["test_accuracy"] < 0.2, "measured 0.07–0.08: labels out of step with images learn nothing"
