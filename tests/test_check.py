"""The metric regression check: tolerances, invariants, and a deliberately broken change that it must catch."""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys

import pytest

from stages import check
from wdlab.results import flatten
from tests.workspace import ROOT, commit_all, copy_project, dvc, run

SYNTHETIC = json.loads((ROOT / "baselines/default/synthetic.json").read_text())
RULES = check.load_checks(ROOT / "checks.yaml")["studies"]["synthetic"]["tolerances"]


def failed(rows):
    return [r.metric for r in rows if not r.ok]


def test_identical_metrics_pass_and_every_metric_is_checked():
    rows = check.compare(SYNTHETIC, SYNTHETIC, RULES)
    assert failed(rows) == []
    assert len(rows) == len(flatten(SYNTHETIC))


@pytest.mark.parametrize(
    ("metric", "factor", "ok"),
    [
        ("grid.lambda_3.test_loss", 1.04, True),
        ("grid.lambda_3.test_loss", 1.06, False),
        ("grid.lambda_0.w_norm", 1.019, True),
        ("grid.lambda_0.w_norm", 0.97, False),
        ("grid.lambda_3.ridge_test_loss", 1.001, False),
        ("headline.lambda", 2.0, True),  # 0 × 2 = 0: unchanged
    ],
)
def test_tolerances(metric, factor, ok):
    now = copy.deepcopy(SYNTHETIC)
    node, *path = now, *metric.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] *= factor
    assert (failed(check.compare(SYNTHETIC, now, RULES)) == []) is ok


def test_missing_nan_and_flipped_flags_fail():
    now = copy.deepcopy(SYNTHETIC)
    del now["grid"]["lambda_10"]["test_loss"]
    now["grid"]["lambda_30"]["w_norm"] = math.nan
    now["grid"]["lambda_1"]["diverged"] = True
    assert set(failed(check.compare(SYNTHETIC, now, RULES))) == {
        "grid.lambda_10.test_loss", "grid.lambda_30.w_norm", "grid.lambda_1.diverged",
    }


def test_synthetic_invariants_hold_on_the_baseline_and_catch_violations():
    assert failed(check.synthetic_invariants(SYNTHETIC, 0.1)) == []
    bad = copy.deepcopy(SYNTHETIC)
    bad["grid"]["lambda_3"]["test_loss"] = bad["grid"]["lambda_0"]["test_loss"] * 2
    bad["grid"]["lambda_10"]["w_norm"] = 100.0
    bad["grid"]["lambda_30"]["objective"] = bad["grid"]["lambda_30"]["ridge_objective"] / 2
    assert set(failed(check.synthetic_invariants(bad, 0.1))) == {
        "invariant: test loss λ=3 < λ=0", "invariant: ‖w‖ falls as λ grows", "invariant: objective λ=30 ≥ exact ridge",
    }


def test_cli_exit_codes_and_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "checks.yaml", tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/synthetic.json").write_text(json.dumps(SYNTHETIC))
    assert check.main(["--profile", "default"]) == 2  # no baseline yet
    assert "--update" in capsys.readouterr().err
    assert check.main(["--update"]) == 0
    assert check.main([]) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "tolerance" in out and "verdict" in out and " 0 regressed" in out

    worse = copy.deepcopy(SYNTHETIC)
    worse["grid"]["lambda_3"]["test_loss"] *= 3
    (tmp_path / "metrics/synthetic.json").write_text(json.dumps(worse))
    assert check.main([]) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("grid.lambda_3.test_loss "))
    assert line.rstrip().endswith("FAIL")
    assert check.main(["--profile", "nope"]) == 2


@pytest.mark.slow
def test_a_wrong_lambda_in_the_code_fails_the_check(tmp_path):
    """A deliberately broken change: the training code applies λ/10. The check must catch it."""
    project = copy_project(tmp_path / "project")
    shutil.copytree(ROOT / "baselines", project / "baselines")
    shutil.copy(ROOT / "checks.yaml", project / "checks.yaml")
    linreg = project / "wdlab/synthetic/training.py"
    source = linreg.read_text()
    assert "self.lam / 2 * (self.weight**2)" in source
    linreg.write_text(source.replace("self.lam / 2 * (self.weight**2)", "self.lam / 20 * (self.weight**2)"))
    commit_all(project, "a subtle bug")
    dvc(project, "repro", "evaluate_synthetic")
    proc = run([sys.executable, "-m", "stages.check"], cwd=project, check=False)
    assert proc.returncode == 1, proc.stdout
    failures = [line.split()[0] for line in proc.stdout.splitlines() if line.rstrip().endswith("FAIL")]
    assert "grid.lambda_3.test_loss" in failures and "grid.lambda_3.w_norm" in failures
