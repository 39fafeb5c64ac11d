"""params.yaml is validated once, before any work: each bad value stops with one line naming the key."""

from __future__ import annotations

import copy
import sys

import pytest

from stages import generate
from tests.helpers.stages import stage, stage_args
from wdlab.settings import ParamsError, parse_settings
from wdlab.stage import run_stage
from wdlab.workspace import ROOT, load_params, set_key, write_params

BASE = load_params()


def test_committed_params_are_valid():
    settings = parse_settings(BASE)
    assert settings.wd == BASE["wd"]
    assert 3.0 in settings.synthetic.strength_grid and 0.0 in settings.synthetic.strength_grid
    assert len(settings.synthetic.strength_grid) >= 10
    assert max(settings.synthetic.strength_grid) >= 100
    assert 0.0 in settings.cifar10.strength_grid and settings.cifar10.wd in settings.cifar10.strength_grid, (
        "the headline is a grid run"
    )
    assert len(settings.cifar10.seeds) >= 3, "every CIFAR-10 finding with its spread over seeds"
    assert len(settings.synthetic.seeds) >= 10, "spread comparable with the reference's 10 seeds"


def test_yaml_1_2_floats_without_a_dot_are_numbers():
    params = copy.deepcopy(BASE)
    set_key(params, "cifar10.wd", 5e-4)
    assert parse_settings(params).cifar10.wd == pytest.approx(5e-4)


BAD = [
    # (key, value, words the message must contain)
    ("wd", -1, "must be >= 0"),
    ("wd", "three", "must be a number"),
    ("wd", float("nan"), "finite"),
    ("synthetic.seeds", [0, 1.5], "must be an integer"),
    ("synthetic.seeds", [True], "must be an integer"),
    ("synthetic.seeds", [], "at least one seed"),
    ("synthetic.seeds", 3, "a list"),
    ("cifar10.seeds", [1, 1], "distinct"),
    ("cifar10.seeds", [0, -1], ">= 0"),
    ("cifar10.data.split_seed", -1, ">= 0"),
    ("device", "tpu", "one of auto, cpu, cuda, mps"),
    ("synthetic.strengths.l2", [], "at least one"),
    ("synthetic.strengths.l2", [0, -0.1], ">= 0"),
    ("synthetic.strengths.l1", [0, -0.1], ">= 0"),
    ("synthetic.strengths.decoupled", [1, 1], "distinct"),
    ("synthetic.strengths.l2", 3, "a list"),
    ("synthetic.strengths.l2", [0, "x"], "a number"),
    ("synthetic.strengths.dropout", [0, 1.0], "[0, 1)"),
    ("synthetic.strengths.dropout", [-0.1, 0.5], ">= 0"),
    ("synthetic.regularizer", "l3", "l2, decoupled, l1, dropout"),
    ("cifar10.regularizer", "weight_decay", "l2, decoupled, l1, dropout"),
    ("cifar10.strengths.dropout", [0.5, 1.2], "[0, 1)"),
    ("cifar10.train.adamw_lr", 0, "> 0"),
    ("synthetic.train.lr", -0.1, "> 0"),
    ("synthetic.train.lr", 0, "> 0"),
    ("synthetic.train.batch_size", 0, ">= 1"),
    ("synthetic.train.epochs", "100", "an integer"),
    ("synthetic.train.implementation", "fancy", "scratch, concise"),
    ("synthetic.data.n_train", 1, ">= 2"),
    ("synthetic.data.noise_std", -0.01, ">= 0"),
    ("synthetic.cv_folds", 1, ">= 2"),
    ("cifar10.train.momentum", 1.0, "[0, 1)"),
    ("cifar10.strengths.l2", [], "at least one"),
    ("tracking.enabled", "yes", "true or false"),
    ("synthetic.data", 5, "mapping"),
    ("executor.kind", "dask", "one of local, ray"),
    ("executor.cpus_per_run", 0, ">= 1"),
    ("executor.cpus_per_run", 1.5, "an integer"),
    ("executor.gpus_per_run", -0.5, ">= 0"),
    ("executor.gpus_per_run", 1.5, "a fraction of one GPU"),
    ("executor.max_retries", -1, ">= 0"),
    ("executor.address", "", "non-empty"),
]


def test_the_executor_is_no_stage_dependency_and_fractional_gpus_are_allowed():
    """It changes where runs happen, never what they compute: DVC must not rerun a stage when it changes."""
    stages = load_params(ROOT / "dvc.yaml")["stages"]
    listed = [
        key for spec in stages.values() for key in (spec.get("do", spec).get("params") or []) if isinstance(key, str)
    ]
    assert not [key for key in listed if key.startswith("executor")]
    assert parse_settings(set_key(copy.deepcopy(BASE), "executor.gpus_per_run", 0.25)).executor.gpus_per_run == 0.25
    assert parse_settings(set_key(copy.deepcopy(BASE), "executor.gpus_per_run", 2)).executor.gpus_per_run == 2


@pytest.mark.parametrize(("key", "value", "words"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_stops_the_stage_with_one_line_and_touches_nothing(key, value, words, tmp_path, monkeypatch, capsys):
    params = write_params(tmp_path / "params.yaml", set_key(copy.deepcopy(BASE), key, value))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["generate", *stage_args("generate", "--params", str(params))])
    with pytest.raises(SystemExit) as stop:
        run_stage(generate.main, generate.parser())
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and key in line and words in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "no output may be written"


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda p: p.__setitem__("wd_gird", [1]), "unknown key 'wd_gird'"),
        (
            lambda p: p["synthetic"]["train"].__setitem__("learning_rate", 1),
            "unknown key 'synthetic.train.learning_rate'",
        ),
        (lambda p: p.pop("wd"), "missing key 'wd'"),
        (lambda p: p["synthetic"]["strengths"].pop("l1"), "missing key 'synthetic.strengths.l1'"),
    ],
    ids=["typo-top", "typo-nested", "missing-top", "missing-nested"],
)
def test_unknown_and_missing_keys(mutate, words):
    params = copy.deepcopy(BASE)
    mutate(params)
    with pytest.raises(ParamsError, match=words.replace("(", r"\(").replace(".", r"\.")):
        parse_settings(params)


@pytest.mark.parametrize(("study", "key"), [("synthetic", "wd"), ("cifar10", "cifar10.wd")])
def test_headline_strength_of_dropout_is_a_rate(study, key):
    """wd is a λ for the penalties, but a dropout rate for dropout: 3 is refused there, naming both keys."""
    params = set_key(copy.deepcopy(BASE), f"{study}.regularizer", "dropout")
    parse_settings(set_key(copy.deepcopy(params), key, 0.5))
    with pytest.raises(
        ParamsError, match=rf"{key} = 3 must be a dropout rate in \[0, 1\) when {study}.regularizer is dropout"
    ):
        parse_settings(set_key(params, key, 3))


def test_stage_with_bad_params_exits_before_work(tmp_path):
    bad = write_params(tmp_path / "params.yaml", set_key(copy.deepcopy(BASE), "synthetic.train.lr", -1))
    proc = stage("generate", tmp_path, "--params", str(bad), check=False, PYTHONPATH=str(ROOT))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: " + proc.stderr.strip().removeprefix("error: ")]
    assert "synthetic.train.lr = -1 must be > 0" in proc.stderr
    assert not (tmp_path / "data").exists(), "no output may be written when params are invalid"


def test_broken_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [0\n")
    proc = stage("generate", tmp_path, "--params", str(path), check=False, PYTHONPATH=str(ROOT))
    assert proc.returncode == 2
    assert "not valid YAML" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
