"""Stages that start at the same moment on one MLflow store, as two queued experiments do under
`dvc queue start -j 2`: each keeps every run it logs, in its own experiment, whichever process creates that
experiment."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest

from benchmarks.mlflow_server import mlflow_server
from wdlab.settings import parse_settings
from wdlab.tracking import Tracker
from wdlab.workspace import load_params, tool_env

TRACKING = parse_settings(load_params()).tracking
EXPERIMENT = "wd-race"
RIVAL = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).create_experiment(sys.argv[2])"


def rival_creates_it_first(monkeypatch: pytest.MonkeyPatch, uri: str, name: str) -> list[str]:
    """The race of two stages starting at once, made deterministic: when this process is about to create experiment
    `name`, having found it missing, another process (a real one, on the same store) creates it first. Returns the
    list the rival's experiment id is appended to once it has run."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    created: list[str] = []

    def rival_first(real):
        def create_experiment(self, *args, **kwargs):
            if (kwargs.get("name") or args[0]) == name and not created:
                subprocess.run([sys.executable, "-c", RIVAL, uri, name], env=tool_env(), check=True, timeout=120)
                created.append(mlflow.MlflowClient(uri).get_experiment_by_name(name).experiment_id)
            return real(self, *args, **kwargs)

        return create_experiment

    for store in (RestStore, SqlAlchemyStore):  # a tracking server's client, a database's store
        monkeypatch.setattr(store, "create_experiment", rival_first(store.create_experiment))
    return created


@pytest.fixture
def fresh_process(monkeypatch):
    """No active experiment left by an earlier test: MLflow keeps it per process (and in MLFLOW_EXPERIMENT_ID)."""
    import mlflow.tracking.fluent

    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def stage_runs_while_a_rival_creates_the_experiment(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    created = rival_creates_it_first(monkeypatch, uri, EXPERIMENT)
    tracker = Tracker(TRACKING, EXPERIMENT)
    with (
        tracker.run("l2 grid of 2 strengths", {"seeds": 1}, "race-grid") as grid,
        tracker.run("l2 0 seed 0", {"lambda": 0}, "race-grid-member", nested=True) as member,
    ):
        pass

    assert created, "the other process created the experiment between this one's lookup and its create"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert tracker.experiment_id == experiment == created[0]
    runs = client.search_runs([experiment])
    assert {run.info.run_id for run in runs} == {grid, member}, "the stage's run and its member, side by side"
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_a_stage_whose_experiment_another_creates_at_once_keeps_every_run_sqlite(tmp_path, monkeypatch, fresh_process):
    stage_runs_while_a_rival_creates_the_experiment(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow
def test_a_stage_whose_experiment_another_creates_at_once_keeps_every_run_server(tmp_path, monkeypatch, fresh_process):
    with mlflow_server(tmp_path, tmp_path / "mlflow.log") as base:
        stage_runs_while_a_rival_creates_the_experiment(monkeypatch, base)
