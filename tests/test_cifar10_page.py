"""The CIFAR-10 page states only what its records say: the findings (wdlab/cifar10/findings.py) are computed from small
made-up grids whose verdicts are opposite (the chosen λ's gain separated from zero or not; the angles reaching the
equilibrium θ* or never), the page is rendered from them, and the opposite sentences are found."""

from __future__ import annotations

import pandas as pd
import pytest
from ruamel.yaml import YAML

from stages import check, report_images
from wdlab import findings
from wdlab.cifar10 import findings as cifar_findings
from wdlab.cifar10.summary import FINAL_KEYS
from wdlab.datasets.registry import get as get_dataset
from wdlab.equilibrium import Equilibrium
from wdlab.results import json_record, seed_summary
from wdlab.settings import parse_settings
from wdlab.workspace import ROOT, load_params

SETTINGS = parse_settings(load_params())
TEMPLATE = ROOT / "reports/templates/images.md.j2"
SEEDS = (0, 1, 2)
GRID = (0.0, 0.05)
LAYERS = ("prep", "layer1")


def finals(gain: list[float], regularizer: str = "l2", seeds: tuple[int, ...] = SEEDS) -> pd.DataFrame:
    """Three seeds at λ = 0 and 0.05: λ = 0 fits its training images (train 0.85, test ~0.65), λ = 0.05 less so, and
    its test accuracy differs from λ = 0's by `gain` seed by seed."""
    rows = []
    for seed in seeds:
        base = 0.65 + 0.01 * seed  # the seeds differ in level; the pairs remove it
        for strength, test in ((0.0, base), (0.05, base + gain[seed])):
            train = 0.85 if strength == 0 else 0.73
            values = dict.fromkeys(FINAL_KEYS, 0.5) | {"train_accuracy": train, "valid_accuracy": test}
            values |= {"test_accuracy": test, "gap_accuracy": train - test, "w_norm": 30.0 - 100 * strength}
            rows.append({"regularizer": regularizer, "seed": seed, "lambda": strength, "diverged": False} | values)
    return pd.DataFrame(rows)


def rotation(measured_over_predicted: list[float]) -> cifar_findings.Rotation:
    """An l2 grid of five epochs whose two layers turn `measured_over_predicted` × θ* per step at λ = 0.05 (per
    epoch), and at λ = 0 a tenth of λ = 0.05's angle, falling."""
    equilibrium = Equilibrium("sgd", 0.05, 0.9, nesterov=True)
    predicted = equilibrium.angular_update(0.05)
    rows = [
        {"seed": seed, "lambda": strength, "epoch": epoch, "layer": layer, "norm": 1.0}
        | (
            {"angular_update": ratio * predicted, "predicted": predicted}
            if strength
            else {"angular_update": 0.1 * predicted / epoch, "predicted": float("nan")}
        )
        for seed in SEEDS
        for strength in GRID
        for epoch, ratio in enumerate(measured_over_predicted, start=1)
        for layer in LAYERS
    ]
    return cifar_findings.Rotation("l2", {0.05: equilibrium}, pd.DataFrame(rows), {0.05: EFOLDS}, list(LAYERS), 100)


def made_up(gain: list[float], ratios: list[float], seeds: tuple[int, ...] = SEEDS) -> dict:
    """The metrics evaluate_images writes for the made-up grid, their findings from the real functions."""
    rows = finals(gain, seeds=seeds)
    summary = seed_summary(rows, FINAL_KEYS)

    def entry(strength: float) -> dict:
        at = summary[summary["lambda"] == strength].iloc[0]
        return {"diverged": 0, "epochs_run": 5} | {
            key: json_record({s: at[f"{key}_{s}"] for s in ("mean", "std", "ci_low", "ci_high")}) for key in FINAL_KEYS
        }

    grid = {f"lambda_{s:g}": entry(s) for s in GRID}
    chosen = {"lambda": 0.05, "test_accuracy": grid["lambda_0.05"]["test_accuracy"]}
    return {
        "seeds": len(seeds),
        "dataset": get_dataset("cifar10").source_record(None),
        "grid": grid,
        "headline": {"lambda": 0.05} | grid["lambda_0.05"],
        "chosen_by_validation": chosen | {"valid_accuracy": grid["lambda_0.05"]["valid_accuracy"]},
        "highest_test_accuracy": chosen,
        "findings": {
            "study": cifar_findings.study(rows, GRID, 0.05, chance=0.1),
            "equilibrium": {"l2": cifar_findings.equilibrium(rotation(ratios), rows)},
        },
    }


def page(metrics: dict) -> str:
    setup = {"n_images": {"train": 2000, "valid": 2000, "test": 10000}, "device": "cpu", "formats": "float32"}
    return report_images.render_page(TEMPLATE, metrics, setup, SETTINGS, "cifar10", ["figures/cifar10/curves.png"])


EFOLDS = [0.8, 1.6, 2.4, 3.2, 4.0]  # the relaxation so far at each epoch's end: 100 steps at ηλ·c = 0.04
STEADY, NOISY = [0.012, 0.010, 0.011], [0.04, -0.03, 0.005]  # the gain per seed: separated from 0, or not
REACHES, NEVER = [2.0, 1.1, 0.97, 1.05, 0.3], [3.0, 2.6, 2.4, 2.2, 2.1]  # measured / predicted per epoch


# ── the records ─────────────────────────────────────────────────────────────────────────────────────


def test_the_gain_is_paired_over_the_seeds_and_its_verdict_follows_the_interval():
    steady = cifar_findings.study(finals(STEADY), GRID, 0.05, chance=0.1)
    assert steady["gain"]["mean"] == pytest.approx(sum(STEADY) / 3) and steady["gain"]["verdict"] == findings.BETTER
    assert steady["gain"]["unpaired_apart"] is False, "the seeds' levels differ more than the gain: unpaired, it hides"
    assert cifar_findings.study(finals(NOISY), GRID, 0.05, chance=0.1)["gain"]["verdict"] == findings.TIED
    assert steady["overfit"]["verdict"] == findings.BETTER and steady["overfit"]["mean"] == pytest.approx(0.19)
    assert steady["chance"]["weakest"] == 0.0 and steady["chance"]["vs_chance"]["verdict"] == findings.BETTER
    assert steady["edge"]["edge"] == "largest" and steady["gap_trend"]["w_norm_falls"]
    assert steady["gap_trend"]["vs"]["verdict"] == findings.BETTER, "the gap falls from λ = 0 to λ = 0.05"


def test_a_diverged_seed_leaves_its_pair_out():
    rows = finals(STEADY)
    rows.loc[(rows["seed"] == 2) & (rows["lambda"] == 0.05), ["diverged", "test_accuracy"]] = [True, float("nan")]
    record = cifar_findings.study(rows, GRID, 0.05, chance=0.1)
    assert record["gain"]["n"] == 2 and record["diverged_strengths"] == "0.05"


def test_the_equilibrium_record_says_whether_and_when_the_angles_come_within_20_percent():
    reaching = cifar_findings.equilibrium(rotation(REACHES), finals(STEADY))["strengths"]["lambda_0.05"]
    assert reaching["reaches"] and reaching["epochs_within"] == "2–4" and reaching["first_within"] == 2
    assert not reaching["at_end"] and reaching["lags"], "0.3 in the last epoch: η_t falls faster than ‖W‖ follows"
    assert reaching["closest"]["epoch"] == 3 and reaching["closest"]["median"] == pytest.approx(0.97)
    assert reaching["per_epoch"]["epoch_1"]["median"] == pytest.approx(2.0)
    assert reaching["per_epoch"]["epoch_2"]["efolds"] == 1.6 and reaching["efolds"] == 4.0, (
        "the run's e-folds: its end's"
    )
    assert not reaching["per_epoch"]["epoch_1"]["within"] and reaching["per_epoch"]["epoch_2"]["within"]
    late = (0.97 + 1.05 + 0.3) / 3  # the last three epochs
    assert reaching["per_layer"] == {layer: pytest.approx(late) for layer in LAYERS}
    assert reaching["last_epochs"] == pytest.approx(late)
    versus = reaching["versus_zero"]
    assert versus["speed"] > cifar_findings.SAME_RATE and versus["prediction"] == "apart"
    never = cifar_findings.equilibrium(rotation(NEVER), finals(STEADY))["strengths"]["lambda_0.05"]
    assert not never["reaches"] and never["epochs_within"] == "" and never["versus_zero"]["prediction"] == "faster"


# ── the page turns with the records ─────────────────────────────────────────────────────────────────


def test_the_page_says_whether_the_gain_exceeds_the_seed_spread():
    separated = page(made_up(STEADY, REACHES))
    assert "it exceeds the seed spread, although the two means' unpaired intervals overlap" in separated
    assert "the interval holds 0" not in separated
    assert "+1.1 points, 95 % interval +0.9 to +1.3 over 3 paired seeds" in separated
    within = page(made_up(NOISY, REACHES))
    assert "the interval holds 0, so the difference is within the seed spread" in within
    assert "exceeds the seed spread" not in within
    assert "λ = 0.05 is the grid's largest, so the optimum may lie beyond it" in separated + within


def test_the_page_says_whether_the_angles_reach_the_equilibrium():
    reaching = page(made_up(STEADY, REACHES))
    assert "measured within 20 % of θ* in epochs 2–4, first after 1.6 e-folds" in reaching
    assert "never within 20 % of θ*" not in reaching
    assert "where η_t falls faster than ‖W‖ can follow" in reaching
    assert "λ = 0.05 reaches θ*" in reaching and "the theory predicts an accuracy apart from λ = 0's" in reaching
    never = page(made_up(STEADY, NEVER))
    assert "never within 20 % of θ*" in never and "measured within 20 %" not in never
    assert "λ = 0.05 never reaches θ*" in never and "from a faster rotation short of θ*" in never
    assert "With fewer than" not in reaching + never, "4 e-folds: the run can settle"


def test_the_page_holds_no_unrendered_value_and_lists_every_lambda():
    text = page(made_up(STEADY, REACHES))
    assert "{{" not in text and "None" not in text and "nan" not in text
    assert "Without weight decay the net fits 85.0% ± 0.0 of its training images" in text
    assert "so every λ that trained learned" in text


def test_checks_yaml_has_a_rule_for_every_finding_and_checks_the_numbers_it_rests_on():
    metrics = made_up(STEADY, REACHES)
    rules = YAML(typ="safe").load((ROOT / "checks.yaml").read_text())["studies"]["cifar10"]["tolerances"]
    tolerances = check.calibrate({"seeds": 3, "findings": metrics["findings"]}, rules, 3)  # raises on a metric unruled
    gain, angle = "findings.study.gain", "findings.equilibrium.l2.strengths.lambda_0.05"
    assert tolerances[f"{gain}.mean"]["kind"] == "mean" and tolerances[f"{gain}.verdict"]["kind"] == "skip"
    assert tolerances[f"{angle}.per_epoch.epoch_2.median"]["kind"] == "mean"
    assert tolerances[f"{angle}.reaches"]["kind"] == "skip" and tolerances[f"{angle}.efolds"]["kind"] == "exact"


def test_with_one_seed_the_page_says_there_is_no_interval():
    text = page(made_up(STEADY, REACHES, seeds=(0,)))
    assert "with one seed the spread is unknown" in text and "(mean over 1 seed)" in text
    assert "+1.2 points, on 1 seed: no interval" in text and "95 % interval" not in text


def test_the_page_names_its_data_and_says_when_the_archive_is_not_the_official_one():
    """The data-source line turns with the record: the official files, or an archive another md5 names."""
    official = made_up(STEADY, REACHES)
    assert "the official CIFAR-10 files" in page(official) and "not the official" not in page(official)
    standin = made_up(STEADY, REACHES) | {"dataset": get_dataset("cifar10").source_record("0" * 32)}
    text = page(standin)
    assert "**not the official CIFAR-10 archive** (md5 `00000000000000000000000000000000`)" in text
    assert "the official CIFAR-10 files" not in text
    fashion = made_up(STEADY, REACHES) | {"dataset": get_dataset("fashion-mnist").source_record(None)}
    assert "# Weight decay on Fashion-MNIST" in page(fashion)
    assert "the official Fashion-MNIST files, each verified by the md5 of its content" in page(fashion)
