"""A stage killed mid-training (Ctrl-C or SIGKILL) loses nothing: cache, lock and MLflow stay consistent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import psutil
import pytest

from wdlab.settings import REGULARIZERS
from wdlab.workspace import SYNTHETIC_BRANCH, background, clone_project, dvc, git, load_params, set_key, write_params

pytestmark = pytest.mark.slow


@pytest.fixture
def baseline(synthetic_template, tmp_path):
    """A fresh copy of the session's reproduced and committed synthetic branch, for this test alone."""
    return clone_project(synthetic_template.path, tmp_path / "project")


def long_training(project) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """`dvc repro` with training long enough to be killed mid-way, in its own process group, ended with the block."""
    write_params(
        project / "params.yaml", set_key(load_params(project / "params.yaml"), "synthetic.train.epochs", 40_000)
    )
    return background([sys.executable, "-m", "dvc", "repro", *SYNTHETIC_BRANCH], cwd=project)


def wait_for_running_training(project, timeout: float = 120) -> str:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("wd-synthetic").experiment_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [
            run
            for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
            if run.data.tags.get("wd_lab.role") in ("synthetic-headline", "synthetic-grid")
        ]  # DVC picks which trains first
        if runs:
            time.sleep(2)  # well inside the training loop
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError("no training stage ever started")


def run_status(project, run_id: str) -> str:
    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_id).info.status


def locked_stages(project) -> dict:
    """dvc.lock's entries but validate's, which finished before the training started (the params are valid) and
    recorded the params.yaml it passed."""
    return {name: entry for name, entry in load_params(project / "dvc.lock")["stages"].items() if name != "validate"}


def assert_nothing_lost(project, lock_before: dict, metrics_before: str) -> None:
    assert locked_stages(project) == lock_before, "dvc.lock must not change for an unfinished stage"
    assert (project / "metrics/synthetic.json").read_text() == metrics_before
    assert not [p for p in project.rglob(".*.tmp") if ".dvc" not in p.parts], "no half-written file may remain"
    # DVC deletes a stage's outputs when it starts it: the previous ones come back, the cached ones from DVC's
    # untouched cache and the git-tracked ones (the headline's metrics) from git
    git(project, "checkout", "--", "metrics")
    dvc(project, "checkout", "--force", "--with-deps", *SYNTHETIC_BRANCH)
    status = json.loads(dvc(project, "status", "--json", "--with-deps", *SYNTHETIC_BRANCH).stdout)
    assert set(status) == {
        "headline_synthetic",
        *(f"train_synthetic@{r}" for r in REGULARIZERS),
        "cross_validate",
        "evaluate_synthetic",  # reads synthetic.train: the recipe the reference band and ηλ's stability assume
        "report_synthetic",
        "compare_synthetic",
    }  # params only
    assert all(list(entry) == ["changed deps"] for entries in status.values() for entry in entries), status


def ended(proc: subprocess.Popen, timeout: float) -> str:
    """The output of `proc` once it has exited; if it has not within `timeout`, fail with where each stage process
    below it is stuck (a stage prints every thread's stack on SIGUSR1: wdlab/stage.py)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        stages = [p for p in psutil.Process(proc.pid).children(recursive=True) if "stages." in " ".join(p.cmdline())]
        for stage in stages:
            stage.send_signal(signal.SIGUSR1)
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate(timeout=30)[0]
        pytest.fail(f"dvc repro still ran {timeout:g} s after the signal; its stages {stages}:\n{output[-6000:]}")


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_killed_training_loses_nothing_and_repro_recovers(baseline, how):
    project = baseline
    lock_before = locked_stages(project)
    metrics_before = (project / "metrics/synthetic.json").read_text()
    with long_training(project) as proc:
        run_id = wait_for_running_training(project)
        os.killpg(proc.pid, getattr(signal, how))  # the whole group, as Ctrl-C in a terminal does
        output = ended(proc, timeout=120)
    assert proc.returncode != 0

    if how == "SIGINT":
        assert run_status(project, run_id) == "KILLED"
        assert "interrupted" in output
    assert_nothing_lost(project, lock_before, metrics_before)

    # back to the committed params: the next repro completes, and a SIGKILLed run no longer shows RUNNING
    git(project, "checkout", "--", "params.yaml")
    dvc(project, "repro", *SYNTHETIC_BRANCH)
    if how == "SIGKILL":
        # nothing could end that run from inside; the next training stage of the study marks it KILLED
        assert run_status(project, run_id) == "RUNNING"
        dvc(project, "repro", "--force", "--single-item", "headline_synthetic")
        dvc(project, "repro", *SYNTHETIC_BRANCH)
    assert run_status(project, run_id) == "KILLED"
    assert (
        dvc(project, "status", "--with-deps", *SYNTHETIC_BRANCH)
        .stdout.strip()
        .endswith("Data and pipelines are up to date.")
    )
    assert (project / "metrics/synthetic.json").read_text() == metrics_before
