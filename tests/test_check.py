"""The metric regression check: tolerances and invariants (the breakage it must catch: test_breakage.py, test_reproducibility.py)."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest

from stages import check
from tests.workspace import ROOT
from wdlab.results import flatten

SYNTHETIC = json.loads((ROOT / "baselines/default/synthetic.json").read_text())
HEADLINE = json.loads((ROOT / "baselines/default/synthetic_headline.json").read_text())
CHECKS = check.load_checks(ROOT / "checks.yaml")
RULES = CHECKS["studies"]["synthetic"]["tolerances"]
TOLERANCES = check.calibrate(SYNTHETIC, RULES, CHECKS["seed_spread_k"])


def failed(rows):
    return [r.metric for r in rows if not r.ok]


def moved(metric: str, change) -> dict:
    now = copy.deepcopy(SYNTHETIC)
    node, *path = now, *metric.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = change(node[path[-1]])
    return now


def test_identical_metrics_pass_and_every_metric_but_the_intervals_is_checked():
    rows = check.compare(SYNTHETIC, SYNTHETIC, TOLERANCES)
    assert failed(rows) == []
    checked = {r.metric for r in rows}
    assert checked == {m for m in flatten(SYNTHETIC) if not m.endswith((".ci_low", ".ci_high"))}


def test_the_committed_tolerances_are_the_calibration_of_the_committed_baseline():
    recorded = json.loads((ROOT / "baselines/default/synthetic.tolerances.json").read_text())
    assert recorded == json.loads(json.dumps(TOLERANCES)), "run `python -m stages.check --calibrate` and commit"


def test_a_mean_may_move_k_standard_errors_of_its_seed_spread():
    metric = "grid.lambda_3.test_loss.mean"
    std, seeds, k = SYNTHETIC["grid"]["lambda_3"]["test_loss"]["std"], SYNTHETIC["seeds"], CHECKS["seed_spread_k"]
    allowed = k * std * math.sqrt(2 / seeds)  # k·σ·√(2/S): the difference of two means of S seeds
    assert TOLERANCES[metric]["abs"] == pytest.approx(allowed)
    assert failed(check.compare(SYNTHETIC, moved(metric, lambda v: v + 0.9 * allowed), TOLERANCES)) == []
    assert failed(check.compare(SYNTHETIC, moved(metric, lambda v: v - 1.1 * allowed), TOLERANCES)) == [metric]


@pytest.mark.parametrize(
    ("metric", "change", "ok"),
    [
        # numerically zero (≈ 1e-31 at λ = 0): another CPU's last bits must not false-alarm
        ("grid.lambda_0.reference_objective.mean", lambda v: 3 * v + 1e-20, True),
        ("grid.lambda_3.reference_test_loss.mean", lambda v: v * 1.001, False),  # a closed form: tight
        ("grid.lambda_0.w_norm.std", lambda v: v * 1.2, True),
        ("grid.lambda_0.w_norm.std", lambda v: v * 1.5, False),
        ("cv.best_lambda", lambda v: v / 10, False),
        ("cv.chosen.lambda_100", lambda v: v - 1, True),  # one seed's choice may flip
        ("cv.chosen.lambda_100", lambda v: v - 3, False),
    ],
)
def test_tolerances(metric, change, ok):
    assert (failed(check.compare(SYNTHETIC, moved(metric, change), TOLERANCES)) == []) is ok


def test_missing_nan_and_flipped_flags_fail():
    now = copy.deepcopy(SYNTHETIC)
    del now["grid"]["lambda_10"]["test_loss"]["mean"]
    now["grid"]["lambda_30"]["w_norm"]["mean"] = math.nan
    now["grid"]["lambda_1"]["diverged"] = 1
    assert set(failed(check.compare(SYNTHETIC, now, TOLERANCES))) == {
        "grid.lambda_10.test_loss.mean", "grid.lambda_30.w_norm.mean", "grid.lambda_1.diverged",
    }


def test_synthetic_invariants_hold_on_the_seed_means_and_catch_violations():
    assert failed(check.synthetic_invariants(SYNTHETIC, 0.1)) == []
    bad = copy.deepcopy(SYNTHETIC)
    grid = bad["grid"]
    grid["lambda_3"]["test_loss"]["mean"] = grid["lambda_0"]["test_loss"]["mean"] * 2
    grid["lambda_10"]["w_norm"]["mean"] = grid["lambda_3"]["w_norm"]["mean"]  # not falling: decay not applied
    grid["lambda_30"]["objective"]["mean"] = grid["lambda_30"]["reference_objective"]["mean"] / 2
    assert set(failed(check.synthetic_invariants(bad, 0.1))) == {
        "invariant: mean test loss λ=3 < λ=0", "invariant: mean ‖w‖ falls as λ grows", "invariant: objective λ=30 ≥ exact optimum",
    }


def test_cli_exit_codes_and_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "checks.yaml", tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/synthetic.json").write_text(json.dumps(SYNTHETIC))
    (tmp_path / "metrics/synthetic_headline.json").write_text(json.dumps(HEADLINE))
    assert check.main(["--profile", "default"]) == 2  # no baseline yet
    assert "--update" in capsys.readouterr().err
    assert check.main(["--update"]) == 0
    assert (tmp_path / "baselines/default/synthetic.tolerances.json").is_file()
    assert (tmp_path / "baselines/default/synthetic_headline.tolerances.json").is_file()
    assert check.main([]) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "tolerance" in out and "verdict" in out and " 0 regressed" in out

    worse = moved("grid.lambda_3.test_loss.mean", lambda v: v * 3)
    (tmp_path / "metrics/synthetic.json").write_text(json.dumps(worse))
    assert check.main([]) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("grid.lambda_3.test_loss.mean "))
    assert line.rstrip().endswith("FAIL")
    assert check.main(["--calibrate"]) == 0 and check.main([]) == 1, "recalibrating keeps the baseline"
    assert check.main(["--profile", "nope"]) == 2
