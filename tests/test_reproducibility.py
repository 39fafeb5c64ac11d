"""Reproductions: a fresh clone's `dvc repro` rewrites nothing git tracks, so `git status` stays clean and every clone
writes the same dvc.lock; and on another CPU kernel set the last bits move, the regression check still passes, and it
still fails a real bug reproduced the same way (bit-identity on one kernel set is test_failures.py's)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import mlflow
import pytest

from tests.helpers.stages import ran_stages
from wdlab.tracking import run_filter
from wdlab.workspace import (
    ROOT,
    SYNTHETIC_BRANCH,
    clone_project,
    commit_all,
    copy_project,
    dvc,
    git,
    load_params,
    run,
    set_key,
    write_params,
)

pytestmark = pytest.mark.slow

# Another CPU, as far as this machine can show one for the synthetic study: ATen's unvectorised kernels, which draw
# even the data's `torch.randn` differently in the last bits (on AVX2 and AVX-512 kernels this study's bits are the
# same), and one torch thread (the thread count moves the last bits of a reduction too).
ANOTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
SYNTHETIC_METRICS = ("evaluate_synthetic", "headline_synthetic")


def test_a_fresh_clone_reproduces_to_a_clean_git_status(synthetic_template, tmp_path):
    """The README's first command on a fresh clone: `dvc repro` (the synthetic branch; CIFAR-10's download needs the
    internet) in a `git clone` of the reproduced template project, at another path, with no DVC cache and an empty
    MLflow store. Every file git tracks comes out byte for byte as committed (dvc.lock, metrics, tables, pages,
    figures): no run id, time, host or absolute path reaches an output, so the usual CI guard `dvc repro && git diff
    --exit-code` can pass, and a colleague's clone writes the same dvc.lock."""
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(synthetic_template.path), str(clone))
    repro = dvc(clone, "repro", *SYNTHETIC_BRANCH)
    assert "train_synthetic@l2" in ran_stages(repro.stdout), "the clone trains again: nothing came from a cache"
    status = git(clone, "status", "--porcelain").stdout
    lock = git(clone, "diff", "--", "dvc.lock").stdout
    assert status == "", f"`dvc repro` on a fresh clone changed what git tracks:\n{status}\n{lock[-3000:]}"
    assert (clone / "dvc.lock").read_bytes() == (synthetic_template.path / "dvc.lock").read_bytes()


def test_an_output_and_its_mlflow_run_find_each_other(synthetic_template):
    """Without a run id in the output: its run.json finds the run (which the report stage found the same way to
    attach its page to), and the run names the output's folder, model md5 and commit."""
    project = synthetic_template.path
    grid = "models/synthetic/grids/l2"
    record = json.loads((project / grid / "run.json").read_text())
    assert record == {"stage": "train_synthetic@l2", "model_md5": record["model_md5"]}, "nothing of the run itself"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("wd-synthetic").experiment_id], run_filter(record))
    assert run.data.tags["wd_lab.output"] == grid and run.data.params["regularizer"] == "l2"
    assert run.data.tags["wd_lab.model_md5"] == hashlib.md5((project / grid / "model.pt").read_bytes()).hexdigest()
    code = git(project, "rev-parse", "HEAD~1").stdout.strip()  # reproduce_synthetic commits the code, then its outputs
    assert run.data.tags["mlflow.source.git.commit"] == code
    assert "report/synthetic.md" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}


def regression_check(project: Path) -> tuple[int, str]:
    """The default profile's check of the synthetic study (the only one these projects reproduce)."""
    studies = ("--study=synthetic", "--study=synthetic_headline")
    proc = run([sys.executable, "-m", "stages.check", *studies], cwd=project, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def on_another_cpu(tmp_path_factory) -> Path:
    """The synthetic study's metrics reproduced from the committed params with the kernels of ANOTHER_CPU."""
    project = copy_project(tmp_path_factory.mktemp("another-cpu") / "project")
    params = set_key(load_params(project / "params.yaml"), "tracking.enabled", False)  # the check reads metrics alone
    write_params(project / "params.yaml", params)
    shutil.copytree(ROOT / "baselines", project / "baselines")
    shutil.copy(ROOT / "checks.yaml", project / "checks.yaml")
    commit_all(project, "code, baselines and checks")
    dvc(project, "repro", *SYNTHETIC_METRICS, **ANOTHER_CPU)
    return project


def test_the_synthetic_study_passes_the_check_on_another_kernel_set(on_another_cpu):
    committed = (ROOT / "metrics/synthetic.json").read_bytes()
    returncode, output = regression_check(on_another_cpu)
    assert returncode == 0, f"the check false-alarms with {ANOTHER_CPU}:\n{output[-5000:]}"
    # not vacuous: the kernels did move the results (if not, this machine cannot show another CPU this way)
    assert (on_another_cpu / "metrics/synthetic.json").read_bytes() != committed


def test_a_wrong_lambda_in_the_code_fails_the_check(on_another_cpu, tmp_path):
    """A deliberately broken change: the training code applies λ/10. The check must catch it, on the same kernels
    on which the clean code passes."""
    project = clone_project(on_another_cpu, tmp_path / "project")
    l2 = project / "wdlab/regularizers.py"  # where the L2 penalty is defined, once
    line = "strength / 2 * (weight**2).sum(dim=-1)  # λ/2·‖w‖², differentiated with the data loss"
    source = l2.read_text()
    assert source.count(line) == 1, "the line this test breaks moved: update the test"
    l2.write_text(source.replace(line, line.replace("strength / 2", "strength / 20")))
    commit_all(project, "a subtle bug")
    dvc(project, "repro", *SYNTHETIC_METRICS, **ANOTHER_CPU)
    returncode, output = regression_check(project)
    assert returncode == 1, output
    failures = [line.split()[0] for line in output.splitlines() if line.rstrip().endswith("FAIL")]
    assert "grid.lambda_3.test_loss.mean" in failures and "grid.lambda_3.w_norm.mean" in failures
