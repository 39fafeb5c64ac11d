"""Stages that start at the same moment on one MLflow store, as two queued experiments do under
`dvc queue start -j 2`: each keeps every run it logs, in its own experiment, whichever process creates that
experiment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from benchmarks.mlflow_server import mlflow_server
from wdlab.lineage import DatasetInput
from wdlab.settings import parse_settings
from wdlab.tracking import HOST_TAG, PID_TAG, START_TAG, Tracker
from wdlab.workspace import ROOT, load_params, tool_env

TRACKING = parse_settings(load_params()).tracking
EXPERIMENT = "wd-race"
RIVAL = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).create_experiment(sys.argv[2])"
RIVAL_DATASET = """
import sys, mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput
uri, experiment, name, digest = sys.argv[1:]
client = mlflow.MlflowClient(uri)
run = client.create_run(client.get_experiment_by_name(experiment).experiment_id).info.run_id
client.log_inputs(run, [DatasetInput(MetaDataset(CodeDatasetSource({}), name=name, digest=digest)._to_mlflow_entity())])
client.set_terminated(run)
"""


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
    for variable in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(variable, "")  # remembers how it was, to restore after the test whatever MLflow sets
        monkeypatch.delenv(variable)


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


def test_two_stages_naming_the_same_data_at_once_both_log_it(tmp_path, monkeypatch, fresh_process):
    """The store looks a dataset up, then inserts it: here another process inserts the same dataset (another run of
    the same experiment) between the two, deterministically, from SQLAlchemy's before-flush event."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = DatasetInput("synthetic-train", "0123456789abcdef", {"generator": "test"})
    tracker = Tracker(TRACKING, EXPERIMENT)
    rivals: list[int] = []

    def rival_inserts_first(session, flush_context, instances) -> None:
        if not rivals and any(isinstance(row, SqlDataset) for row in session.new):
            rival = [sys.executable, "-c", RIVAL_DATASET, uri, EXPERIMENT, data.name, data.digest]
            rivals.append(subprocess.run(rival, env=tool_env(), timeout=120).returncode)

    event.listen(Session, "before_flush", rival_inserts_first)
    try:
        with tracker.run("headline l2 3", {"seeds": 1}, "race-headline", datasets=[data]) as run_id:
            pass
    finally:
        event.remove(Session, "before_flush", rival_inserts_first)

    assert rivals == [0], "the other process logged the dataset between this one's lookup and its insert"
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    assert [i.dataset.digest for i in client.get_run(run_id).inputs.dataset_inputs] == [data.digest]
    assert {i.dataset.digest for run in runs for i in run.inputs.dataset_inputs} == {data.digest}, "one dataset"


def test_a_stage_process_runs_mlflow_without_its_telemetry_thread(tmp_path):
    """MLflow's telemetry thread, on a machine that cannot fetch its config, unsets an environment variable while a
    tracking request iterates os.environ: the request fails with a KeyError. A stage's process never starts it."""
    stage = (
        "from wdlab.settings import parse_settings; from wdlab.tracking import Tracker; "
        "from wdlab.workspace import load_params; "
        f"Tracker(parse_settings(load_params()).tracking, {EXPERIMENT!r}); "
        "from mlflow.telemetry.utils import is_telemetry_disabled; print(is_telemetry_disabled())"
    )
    env = {  # as a user's shell has it: MLflow turns its telemetry off by itself under pytest and on CI machines
        name: value
        for name, value in tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}").items()
        if name not in ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI")
    }
    done = subprocess.run([sys.executable, "-c", stage], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True", "MLflow was imported with its telemetry on"


def test_a_run_whose_pid_now_belongs_to_another_process_is_marked_killed(tmp_path, monkeypatch, fresh_process):
    """Two queue workers on one host: a stage killed long ago left its runs RUNNING, and the kernel has since given
    its pid to another process. The next stage to start ends those runs, and leaves the live process's own alone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker(TRACKING, EXPERIMENT)
    client = mlflow.MlflowClient(uri)
    reused = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), START_TAG: "1"}  # this pid, another start
    orphan = client.create_run(tracker.experiment_id, tags=reused).info.run_id
    with tracker.run("headline l2 3", {}, "race-headline") as live:
        Tracker(TRACKING, EXPERIMENT)  # the other worker's next stage starts
        assert client.get_run(live).info.status == "RUNNING", "the live run of this process is left alone"
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(live).info.status == "FINISHED"
