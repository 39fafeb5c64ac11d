"""The team tracking server of docs/mlflow.md, for real: `mlflow server` on PostgreSQL, written at once by two queued
experiments (`dvc queue start -j 2`), each a CIFAR-10 grid on the same Ray cluster, whose workers log each epoch to
the server while their runs train."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from dvc import api as dvc_api

from benchmarks import postgres
from benchmarks.mlflow_server import mlflow_server
from benchmarks.ray_cluster import ray_cluster
from tests.helpers.projects import cifar_project
from tests.helpers.stages import wait_for_queue
from wdlab.workspace import commit_all, dvc

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_environment")]

EPOCHS = 4
STRENGTHS = [0, 1.0e-2]
SEEDS = (0, 1)  # one queued experiment per seed, each the l2 grid: 2 λ, so 2 runs
TINY = {  # a few seconds a run on one core
    "device": "cpu",
    "cifar10.seeds": [SEEDS[0]],
    "cifar10.data.train_subset": 0,
    "cifar10.data.valid_size": 60,
    "cifar10.model.width": 8,
    "cifar10.train.epochs": EPOCHS,
    "cifar10.train.batch_size": 25,
    "cifar10.train.mixed_precision": False,
    "cifar10.strengths.l2": STRENGTHS,
    "executor.kind": "ray",
    "executor.cpus_per_run": 1,  # the one-CPU Ray node trains one run at a time, of either experiment
}
GRID = "models/cifar10/grids/l2"
EPOCH_MS = 20  # far less than an epoch of TINY takes on any CPU (10 steps, ~360 images measured)


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """docs/mlflow.md's team server: PostgreSQL, and `mlflow server` on it with its artifacts in a temp dir; both
    stopped when the module's tests are done, passed or not."""
    if reason := postgres.missing():
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("team-server")
    with (
        postgres.postgres_server() as database,
        mlflow_server(home, home / "mlflow.log", database, artifacts=home / "artifacts") as base,
    ):
        yield base


def test_two_queued_ray_grids_log_to_one_server_at_once_epoch_by_epoch(team_server, tmp_path):
    # a tiny CIFAR-10 project whose params.yaml logs to the server, its data downloaded and committed
    project, _ = cifar_project(tmp_path, TINY | {"tracking.uri": team_server}, "download@cifar10")
    commit_all(project, "data downloaded")
    for seed in SEEDS:
        dvc(project, "exp", "run", "--queue", "-S", f"cifar10.seeds=[{seed}]", "train_images@cifar10-l2")
    try:
        with ray_cluster(workers=0) as cluster:
            dvc(project, "queue", "start", "-j", "2", **cluster.env, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.5")
            status = wait_for_queue(project, timeout=300, poll=2)
    finally:
        dvc(project, "queue", "stop", "--kill", check=False)
    assert status.count("Success") == len(SEEDS) and "Failed" not in status, status

    client = mlflow.MlflowClient(team_server)
    experiment = client.get_experiment_by_name("wd-cifar10").experiment_id
    every = client.search_runs([experiment], max_results=1000)
    assert len(every) == len(SEEDS) * (1 + 2 * len(STRENGTHS)), sorted(  # each grid: its run, one per λ, one per seed
        (run.data.tags.get("dvc.exp_name"), run.data.tags["wd_lab.role"], run.info.run_name) for run in every
    )
    assert not [run.info.run_name for run in every if run.info.status != "FINISHED"], "none left RUNNING"
    grids = [run for run in every if run.data.tags["wd_lab.role"] == "cifar10-grid"]
    assert len({run.data.tags["dvc.exp_name"] for run in grids}) == len(SEEDS), "one grid per queued experiment"
    assert min(run.info.end_time for run in grids) > max(run.info.start_time for run in grids), (
        "the two experiments wrote to the server at the same time"
    )

    seeds: set[int] = set()
    for grid in grids:
        made = grid.data.tags["dvc.exp_name"]  # the experiment's DVC outputs, from the project's cache
        record = json.loads(dvc_api.read(f"{GRID}/run.json", repo=str(project), rev=made))
        assert grid.data.tags["wd_lab.model_md5"] == record["model_md5"], "the output names its run's tag, not its id"
        with dvc_api.open(f"{GRID}/history.csv", repo=str(project), rev=made) as csv:
            history = pd.read_csv(csv, float_precision="round_trip")
        members = client.search_runs(
            [experiment], f"tags.wd_lab.grid_run = '{grid.info.run_id}' and tags.wd_lab.role = 'cifar10-grid-member'"
        )
        assert sorted(float(member.data.params["lambda"]) for member in members) == STRENGTHS
        assert len({member.data.params["seed"] for member in members}) == 1
        seeds.update(int(member.data.params["seed"]) for member in members)
        for member in members:
            own = history[history["lambda"] == float(member.data.params["lambda"])].sort_values("epoch")
            for name in ("train_loss", "test_accuracy"):
                curve = client.get_metric_history(member.info.run_id, name)
                assert [m.step for m in curve] == list(range(EPOCHS + 1))
                assert [m.value for m in curve] == own[name].tolist(), "the DVC outputs' numbers, to the bit"
            stamps = [m.timestamp for m in curve]
            (final,) = client.get_metric_history(member.info.run_id, "final_test_accuracy")  # the driver's, at the end
            assert all(a < b for a, b in zip(stamps, stamps[1:])), "each epoch logged as it ended, one after another"
            assert stamps[-1] < final.timestamp <= member.info.end_time, "all logged before the run's result came back"
            assert stamps[-1] - stamps[0] >= EPOCH_MS * EPOCHS, "spread over the training, not logged in one go"
            assert any(name.startswith("system/cpu") for name in member.data.metrics), "the worker's system metrics"
            assert client.list_artifacts(member.info.run_id, "model"), "its weights, through the server"
    assert seeds == set(SEEDS)
