"""Queued experiments run two at a time: every one lands in `dvc exp show` and in the shared MLflow store."""

from __future__ import annotations

import json
import time

import mlflow
import pytest

from tests.workspace import SYNTHETIC_BRANCH, clone_project, dvc

pytestmark = pytest.mark.slow

WDS = (0.0, 0.1, 1.0, 3.0)


def wait_for_queue(project, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status").stdout
        if "Running" not in status and "Queued" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout:.0f} s:\n{status}")


@pytest.fixture
def queued_project(synthetic_template, tmp_path):
    """A fresh copy of the session's reproduced and committed synthetic branch; its queue is stopped afterwards."""
    project = clone_project(synthetic_template.path, tmp_path / "project")
    yield project
    dvc(project, "queue", "stop", "--kill", check=False)


def test_four_queued_experiments_two_workers(queued_project):
    project = queued_project
    dvc(project, "exp", "run", "--queue", "-S", "wd=" + ",".join(f"{w:g}" for w in WDS), *SYNTHETIC_BRANCH)
    dvc(project, "queue", "start", "-j", "2")
    status = wait_for_queue(project)
    assert status.count("Success") == len(WDS) and "Failed" not in status, status

    rows = json.loads(dvc(project, "exp", "show", "--json").stdout)
    landed = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            data = exp["revs"][0]["data"]
            wd = data["params"]["params.yaml"]["data"]["wd"]
            landed[float(wd)] = data["metrics"]["metrics/synthetic_headline.json"]["data"]["headline"]
    assert set(landed) == set(WDS)
    assert all(landed[w]["lambda"] == w for w in WDS)
    mean = {w: landed[w]["test_loss"]["mean"] for w in WDS}
    assert mean[3.0] < mean[1.0] < mean[0.1] <= mean[0.0]

    # one MLflow store at the project root holds every headline run, none left RUNNING
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-synthetic")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`wd_lab.role` = 'synthetic-headline'")
    assert {float(r.data.params["lambda"]) for r in runs} == set(WDS)
    assert all(r.info.status == "FINISHED" for r in runs)
    queued = {r.data.tags.get("dvc.exp_name") for r in runs} - {None}
    assert len(queued) >= len(WDS) - 1  # λ = 0 may come back from the run cache of the baseline
    assert not list((project / ".dvc" / "tmp" / "exps").glob("**/mlflow.db")), "no run may write a store in its temp copy"
