"""Queued experiments run two at a time: every one lands in `dvc exp show` and in the shared MLflow store."""

from __future__ import annotations

import json

import mlflow
import pytest

from tests.helpers.stages import wait_for_queue
from wdlab.workspace import SYNTHETIC_BRANCH, clone_project, dvc

pytestmark = pytest.mark.slow

WDS = (
    0.1,
    0.3,
    1.0,
    3.0,
)  # none is the committed wd = 0, whose run the run cache (and the template's store) already hold


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
    landed, names = {}, set()
    for row in rows:
        for exp in row.get("experiments") or []:
            data = exp["revs"][0]["data"]
            wd = data["params"]["params.yaml"]["data"]["wd"]
            landed[float(wd)] = data["metrics"]["metrics/synthetic_headline.json"]["data"]["headline"]
            names.add(exp.get("name") or exp["revs"][0]["name"])
    assert set(landed) == set(WDS)
    assert all(landed[w]["lambda"] == w for w in WDS)
    mean = [landed[w]["test_loss"]["mean"] for w in WDS]
    assert mean == sorted(mean, reverse=True) and len(set(mean)) == len(WDS), "test loss falls as λ grows"

    # one MLflow store at the project root holds every headline run, none left RUNNING
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-synthetic")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`wd_lab.role` = 'synthetic-headline'")
    queued = [r for r in runs if "dvc.exp_name" in r.data.tags]  # the template's own wd = 0 run has no experiment
    assert sorted(float(r.data.params["lambda"]) for r in queued) == sorted(WDS), "each queued λ trained once"
    assert {r.data.tags["dvc.exp_name"] for r in queued} == names and len(names) == len(WDS)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert not list((project / ".dvc" / "tmp" / "exps").glob("**/mlflow.db")), (
        "no run may write a store in its temp copy"
    )
