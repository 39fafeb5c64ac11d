"""The strength sweep (benchmarks/strength_sweep.py): its summary on made-up runs (means over seeds without the
diverged ones, whether the sweep brackets the best validation accuracy, the paired gain over λ = 0), and its data and
nets on the generated Fashion-MNIST stand-in, trained for an epoch. The sweep itself trains for minutes to hours;
docs/cifar10.md and docs/datasets.md record its runs."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from benchmarks.strength_sweep import (
    STANDIN,
    SUMMARY,
    SWEEP,
    _run_in_worker,
    _start_worker,
    dataset_splits,
    gain_over_zero,
    optimum,
    result_name,
    run_record,
    study_for,
    summarise,
    sweep,
    sweep_for,
)
from tests.helpers.cifar import coloured_splits, tiny_settings
from wdlab.cifar10.data import MEAN, STD
from wdlab.cifar10.grid import RunSpec, train_run
from wdlab.cifar10.training import Trainer
from wdlab.datasets.registry import get
from wdlab.device import device_formats


def run(valid: float, diverged: bool = False, zeros: float = 0.0) -> dict:
    return {key: valid for key in SUMMARY} | {"zero_fraction": zeros, "diverged": diverged}


def test_a_strength_is_summarised_over_the_seeds_that_finished():
    summary = summarise([run(0.60), run(0.64, zeros=0.5), run(float("nan"), diverged=True)])
    assert summary["valid_accuracy"] == pytest.approx(0.62) and summary["zero_fraction"] == pytest.approx(0.25)
    assert summary["diverged"] == 1 and len(summary["test_accuracy_by_seed"]) == 3
    assert summarise([run(float("nan"), diverged=True)])["valid_accuracy"] is None


def test_the_best_strength_is_bracketed_only_with_a_strength_on_each_side():
    rows = {"0": 0.60, "2": 0.65, "10": 0.67, "50": 0.51}
    swept = {strength: summarise([run(valid)]) for strength, valid in rows.items()}
    assert optimum(swept) == {"best_valid": 10.0, "bracketed": True}
    del swept["50"]
    assert optimum(swept) == {"best_valid": 10.0, "bracketed": False}, "the largest strength swept is the best"
    swept["0"] = summarise([run(float("nan"), diverged=True)])
    assert optimum(swept)["best_valid"] == 10.0, "a strength whose every run diverged is never the best"


def made_up_runs(base: list[float], chosen: list[float], strength: float = 5e-2) -> list[dict]:
    """Seed by seed test accuracies at λ = 0 and at `strength`, as `sweep` records its runs."""
    return [
        run(accuracy) | {"seed": seed, "lambda": lam}
        for lam, accuracies in ((0.0, base), (strength, chosen))
        for seed, accuracy in enumerate(accuracies)
    ]


def test_the_gain_over_no_decay_is_paired_seed_by_seed():
    gain = gain_over_zero(made_up_runs([0.80, 0.85, 0.90], [0.81, 0.87, 0.93]), 5e-2)
    assert gain["mean"] == pytest.approx(0.02) and gain["std"] == pytest.approx(0.01)
    assert gain["by_seed"] == {0: pytest.approx(0.01), 1: pytest.approx(0.02), 2: pytest.approx(0.03)}
    # t(0.975, 2) = 4.303: the interval is 0.02 ± 4.303 · 0.01 / √3, so it reaches below zero
    assert gain["ci_low"] == pytest.approx(0.02 - 4.3027 * 0.01 / 3**0.5, abs=1e-4) and gain["ci_low"] < 0
    assert gain_over_zero(made_up_runs([0.8], [0.9]), 0.0) is None, "λ = 0 has no gain over itself"


def test_a_diverged_seed_drops_out_of_the_pairs():
    runs = made_up_runs([0.80, 0.85, 0.90], [0.81, 0.87, float("nan")])
    runs[-1]["diverged"] = True
    assert gain_over_zero(runs, 5e-2)["by_seed"] == {0: pytest.approx(0.01), 1: pytest.approx(0.02)}


def test_each_dataset_has_its_grids_and_its_results_file():
    assert sweep_for(STANDIN, "resnet") is SWEEP, "the stand-in's sweep is the one its committed result measured"
    assert sweep_for("fashion-mnist", "resnet")["l2"] == (0.0, 1e-2, 5e-2, 1e-1, 2e-1)
    assert sweep_for("fashion-mnist", "plain") == {"l2": (0.0, 5e-3, 5e-2, 2e-1)}
    assert result_name(STANDIN) == "strength_sweep" and result_name("fashion-mnist") == "strength_sweep_fashion_mnist"
    # --train-subset: its own file, so the full-data preset does not overwrite the default-sized sweep
    assert result_name("fashion-mnist", 58_000) == "strength_sweep_fashion_mnist_58000"


def test_each_dataset_sweeps_with_its_own_study_of_params():
    settings = tiny_settings(**{"fashion_mnist.data.train_subset": 77})
    assert study_for(settings, STANDIN, None) == settings.cifar10
    fashion = study_for(settings, "fashion-mnist", None)
    assert fashion == settings.fashion_mnist and fashion.data.train_subset == 77
    full = study_for(settings, "fashion-mnist", 0)
    assert full.data.train_subset == 0 and full.data.valid_size == fashion.data.valid_size
    assert full.train == fashion.train


def test_cifar10_runs_are_computed_as_without_the_dataset_shapes():
    splits = coloured_splits()  # CIFAR-10's images: its channels, side, classes and statistics
    study = tiny_settings().cifar10
    formats = device_formats(torch.device("cpu"), mixed_precision=False)
    for net in ("resnet", "plain"):
        sized = Trainer.create(study, "l2", 0.0, 0, formats, n_train=10, architecture=net, data=splits)
        default = Trainer.create(study, "l2", 0.0, 0, formats, n_train=10, architecture=net)
        assert sized.pixels == default.pixels == (MEAN, STD), "the same pixels as the trainer's own normalisation"
        assert sized.model.state_dict().keys() == default.model.state_dict().keys()
        assert all(
            torch.equal(a, b) for a, b in zip(sized.model.state_dict().values(), default.model.state_dict().values())
        )
    assert splits.net_inputs() == {"in_channels": 3, "side": 32, "classes": 10}


@pytest.fixture
def fashion_splits(tmp_path):
    """The generated Fashion-MNIST stand-in, fetched and cut as the sweep cuts the real files: 30 training images,
    20 validation, the stand-in's 50 test images."""
    standin = get("fashion-mnist").build_standin(tmp_path / "standin", train_images=100, test_images=50)
    data = tiny_settings().cifar10.data.model_copy(update={"train_subset": 30, "valid_size": 20, "curve_subset": 0})
    return dataset_splits("fashion-mnist", tmp_path, data, [str(standin.folder)], standin.resources)


def test_a_registry_dataset_is_fetched_and_cut_by_the_pipelines_splits(fashion_splits):
    dataset, splits = fashion_splits
    assert dataset.name == "fashion-mnist" and splits.classes == dataset.classes
    assert (splits.mean, splits.std) == (dataset.mean, dataset.std), "its pixels normalised by its own statistics"
    assert [tuple(split.images.shape) for split in splits[:3]] == [(30, 1, 28, 28), (20, 1, 28, 28), (50, 1, 28, 28)]
    assert torch.bincount(splits.train.labels).tolist() == [3] * 10, "class-balanced, as cut_splits cuts"


@pytest.mark.parametrize("net", ["resnet", "plain"])
def test_each_net_trains_on_one_channel_images(fashion_splits, net):
    _, splits = fashion_splits
    study = tiny_settings(
        **{"cifar10.train.epochs": 1, "cifar10.plain.train.epochs": 1, "cifar10.plain.train.mixed_precision": False}
    ).cifar10.for_architecture(net)
    found = sweep(study, net, "l2", (0.0, 1e-2), (0, 1), splits)
    first_conv = next(w for w in train_run(RunSpec(study, "l2", 0.0, 0, "cpu", net), splits).state_dict.values())
    assert first_conv.shape[1] == 1, "the first conv takes Fashion-MNIST's one channel"
    assert list(found["by_strength"]) == ["0", "0.01"] and found["best_valid"] in (0.0, 1e-2)
    for row in found["by_strength"].values():
        assert len(row["test_accuracy_by_seed"]) == 2 and all(0 <= acc <= 1 for acc in row["test_accuracy_by_seed"])
    assert (found["test_accuracy_gain"] is None) == (found["best_valid"] == 0.0)


def test_a_run_in_a_worker_process_computes_the_same_numbers(fashion_splits):
    _, splits = fashion_splits
    study = tiny_settings(**{"cifar10.plain.train.epochs": 1}).cifar10.for_architecture("plain")
    spec = RunSpec(study, "l2", 1e-2, 0, "cpu", "plain")
    here = run_record(spec, splits)
    spawn = multiprocessing.get_context("spawn")
    initargs = (splits, torch.get_num_threads())
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_start_worker, initargs=initargs) as pool:
        there = pool.submit(_run_in_worker, spec).result()
    assert {key: there[key] for key in SUMMARY} == {key: here[key] for key in SUMMARY}, "bit-identical figures"
