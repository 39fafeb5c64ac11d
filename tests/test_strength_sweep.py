"""The strength sweep's summary (benchmarks/strength_sweep.py), on made-up runs: means over seeds without the
diverged ones, and whether the sweep brackets the best validation accuracy. The sweep itself trains for minutes;
docs/cifar10.md records its run."""

from __future__ import annotations

import pytest

from benchmarks.strength_sweep import SUMMARY, optimum, summarise


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
