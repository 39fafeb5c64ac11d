"""The regression check catches real breakage: deliberately broken changes, run through the CI profile, fail it.

Each test copies the project as the CI profile does, breaks one thing in the code, reproduces the branch it
breaks with real `dvc repro` (CIFAR-10 on the generated stand-in served from 127.0.0.1) and runs the check
against the committed baselines/ci.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.workspace import ROOT

pytestmark = pytest.mark.slow


def _profile_module():
    spec = importlib.util.spec_from_file_location("ci_profile", ROOT / ".ci" / "profile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ci_profile", module)
    spec.loader.exec_module(module)
    return module


profile = _profile_module()


def break_code(project: Path, path: str, old: str, new: str) -> None:
    source = (project / path).read_text()
    assert source.count(old) == 1, f"{path} no longer holds the line this test breaks: update the test"
    (project / path).write_text(source.replace(old, new))


def failures(check_output: str) -> set[str]:
    return {line.split("  ")[0].strip() for line in check_output.splitlines() if line.rstrip().endswith("FAIL")}


def checked_after(tmp_path: Path, path: str, old: str, new: str, targets: tuple[str, ...], studies: tuple[str, ...]) -> set[str]:
    project, archive = profile.prepare(tmp_path)
    break_code(project, path, old, new)
    repro = profile.reproduce(project, archive, *targets)
    assert repro.returncode == 0, repro.stderr[-3000:]
    check = profile.regression_check(project, *studies)
    assert check.returncode == 1, f"the check passed a broken change:\n{check.stdout[-3000:]}"
    return failures(check.stdout)


def test_weight_decay_silently_not_applied_by_the_cifar_optimiser(tmp_path):
    failed = checked_after(
        tmp_path, "wdlab/cifar10/training.py",
        '{"name": "decay", "params": decayed, "weight_decay": weight_decay}',
        '{"name": "decay", "params": decayed, "weight_decay": 0.0}',
        ("evaluate_cifar10",), ("cifar10",),
    )
    assert "grid.lambda_0.01.w_norm.mean" in failed and "invariant: mean weight norm falls as λ grows" in failed


def test_cifar_labels_shuffled_against_the_images(tmp_path):
    failed = checked_after(
        tmp_path, "wdlab/cifar10/data.py",
        "Split(data.train_images[train_idx], data.train_labels[train_idx]),",
        "Split(data.train_images[train_idx], data.train_labels[train_idx][torch.randperm(len(train_idx))]),",
        ("evaluate_cifar10",), ("cifar10",),
    )
    assert {"grid.lambda_0.test_accuracy.mean", "headline.test_accuracy.mean"} <= failed


def test_synthetic_learning_rate_100_times_too_low(tmp_path):
    failed = checked_after(
        tmp_path, "wdlab/synthetic/training.py",
        "param -= self.lr * param.grad  # w ← w − η·(∇L + λw)", "param -= self.lr / 100 * param.grad  # the l2 stepper, 100× too slow",
        ("evaluate_synthetic", "headline_synthetic"), ("synthetic", "synthetic_headline"),
    )
    assert {"grid.lambda_0.train_loss.mean", "grid.lambda_3.test_loss.mean", "headline.train_loss.mean"} <= failed
