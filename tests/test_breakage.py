"""The regression check catches real breakage, and only that: the clean code passes it on another CPU kernel set,
and deliberately broken changes, run through the CI profile, fail it.

The CI profile is reproduced once from the clean code with PyTorch computing on kernels one level below this
machine's own (the last bits of every result move, as on another CPU) and must pass the check against the committed
baselines/ci. Each breakage test then takes a copy of that project, breaks one thing in the code, reproduces the
branch it breaks with real `dvc repro` (CIFAR-10 on the generated stand-in served from 127.0.0.1) under the same
kernels, and sees the check fail on the metrics the break must move.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers.ci_profile import profile
from wdlab.workspace import ROOT, clone_project, other_kernel_set

pytestmark = pytest.mark.slow


KERNELS = other_kernel_set()


class Profile(NamedTuple):
    project: Path
    archive: object  # the stand-in archive the profile serves


def failures(check_output: str) -> set[str]:
    return {line.split("  ")[0].strip() for line in check_output.splitlines() if line.rstrip().endswith("FAIL")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Profile:
    """The whole CI profile reproduced from the clean code on another kernel set; it must pass the check, or no
    failure below would mean anything."""
    project, archive = profile.prepare(tmp_path_factory.mktemp("ci-profile"))
    repro = profile.reproduce(project, archive, **KERNELS)
    assert repro.returncode == 0, repro.stderr[-3000:]
    check = profile.regression_check(project)
    profile.summarise(check, f"Regression check (CI profile, clean code, kernels {KERNELS})")
    assert check.returncode == 0, f"the clean code fails the check with kernels {KERNELS}:\n{check.stdout[-5000:]}"
    # not vacuous: the kernels moved the CIFAR-10 results off the baseline's bits
    assert (project / "metrics/cifar10.json").read_bytes() != (ROOT / "baselines/ci/cifar10.json").read_bytes()
    return Profile(project, archive)


def test_the_clean_code_passes_the_check_on_another_kernel_set(clean):
    check = profile.regression_check(clean.project)
    assert check.returncode == 0 and "0 regressed" in check.stdout


# A CIFAR-10 break is reproduced on the l2 grid (the study's regulariser, whose metrics the check reads at each λ),
# the headline that takes its runs, and the evaluation, each alone (--single-item): the other grids keep the clean
# outputs, so a break costs 9 of the profile's runs, not all of them. Every failure asserted below is l2's.
L2_BRANCH = ("--single-item", "train_images@cifar10-l2", "headline_images@cifar10", "evaluate_images@cifar10")


def checked_after(
    clean: Profile, tmp_path: Path, path: str, old: str, new: str, targets: tuple[str, ...], studies: tuple[str, ...]
) -> set[str]:
    project = clone_project(clean.project, tmp_path / "project")
    source = (project / path).read_text()
    assert source.count(old) == 1, f"{path} no longer holds the line this test breaks: update the test"
    (project / path).write_text(source.replace(old, new))
    repro = profile.reproduce(project, clean.archive, *targets, **KERNELS)
    assert repro.returncode == 0, repro.stderr[-3000:]
    check = profile.regression_check(project, *studies)
    assert check.returncode == 1, f"the check passed a broken change:\n{check.stdout[-3000:]}"
    return failures(check.stdout)


def test_weight_decay_silently_not_applied_by_the_cifar_optimiser(clean, tmp_path):
    failed = checked_after(
        clean,
        tmp_path,
        "wdlab/cifar10/training.py",
        '{"name": "decay", "params": decayed, "weight_decay": weight_decay}',
        '{"name": "decay", "params": decayed, "weight_decay": 0.0}',
        L2_BRANCH,
        ("cifar10",),
    )
    assert (
        "grid.lambda_0.01.w_norm.mean" in failed
        and "invariant: mean weight norm below λ = 0's at every λ > 0" in failed
    )


def test_cifar_labels_shuffled_against_the_images(clean, tmp_path):
    failed = checked_after(
        clean,
        tmp_path,
        "wdlab/cifar10/data.py",
        "Split(data.train_images[train_idx], data.train_labels[train_idx]),",
        "Split(data.train_images[train_idx], data.train_labels[train_idx][torch.randperm(len(train_idx))]),",
        L2_BRANCH,
        ("cifar10",),
    )
    assert {"grid.lambda_0.test_accuracy.mean", "headline.test_accuracy.mean"} <= failed


def test_synthetic_learning_rate_100_times_too_low(clean, tmp_path):
    failed = checked_after(
        clean,
        tmp_path,
        "wdlab/synthetic/training.py",
        "param -= self.lr * param.grad",
        "param -= self.lr / 100 * param.grad  # the hand-written stepper, 100× too slow",
        ("evaluate_synthetic", "headline_synthetic"),
        ("synthetic", "synthetic_headline"),
    )
    assert {"grid.lambda_0.train_loss.mean", "grid.lambda_3.test_loss.mean", "headline.train_loss.mean"} <= failed
