"""The CIFAR-10 grid on a real two-node Ray cluster on 127.0.0.1: the same outputs as `local`, runs on both nodes,
nothing lost when the worker node dies, a failed stage resumed without retraining, a wrong address stopped in
seconds."""

from __future__ import annotations

import json
import time

import mlflow
import pytest

from benchmarks.ray_cluster import ray_cluster
from tests.helpers.projects import cifar_project
from tests.helpers.stages import ran_stages, stage, stage_command
from wdlab.errors import StageError
from wdlab.executor import check_address, check_device
from wdlab.settings import REGULARIZERS, ExecutorSettings
from wdlab.tracking import run_filter
from wdlab.workspace import (
    ROOT,
    background,
    clone_project,
    commit_all,
    dvc,
    free_port,
    load_params,
    set_key,
    write_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_environment")]

TINY = {  # 5 (regulariser, strength) × 2 seeds, ~3 s a run on one core
    "device": "cpu",
    "cifar10.seeds": [0, 1],
    "cifar10.data.train_subset": 0,
    "cifar10.data.valid_size": 60,
    "cifar10.model.width": 8,
    "cifar10.train.epochs": 6,  # long enough (~3 s) to kill a node while it trains a run
    "cifar10.train.batch_size": 25,
    "cifar10.train.mixed_precision": False,
    "cifar10.strengths.l2": [0, 1.0e-2],  # the other regularisers keep params.yaml's grids
    "cifar10.strengths.decoupled": [0.05],
    "cifar10.strengths.l1": [1.0e-3],
    "executor.cpus_per_run": 1,  # one torch thread per run under both executors: the nodes have one CPU each
    "cifar10.wd": 1.0e-2,  # in the grid: the headline takes the grid's runs
}
OUTPUTS = tuple(
    f"models/cifar10/grids/{r}/{name}"
    for r in REGULARIZERS
    for name in ("model.pt", "history.csv", "layer_norms.csv", "run.json")
)
GRID = "train_images@cifar10-l2"
METRICS = "metrics/cifar10.json"


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """A project whose grid was trained by the local executor, committed: (project, its output bytes). Each test
    runs in its own clone of it, so none sees what another did."""
    project, _ = cifar_project(tmp_path_factory.mktemp("ray-grid"), TINY, "evaluate_images@cifar10")
    commit_all(project, "grid trained and evaluated locally")
    return project, outputs(project) | {METRICS: (project / METRICS).read_bytes()}


def outputs(project) -> dict[str, bytes]:
    return {name: (project / name).read_bytes() for name in OUTPUTS}


def grid_members(project, regularizer: str = "l2") -> list[mlflow.entities.Run]:
    """The per-seed MLflow runs (nested under their strength's run, tagged with their grid's) of the grid run that
    wrote `regularizer`'s outputs (the l2 grid: 2 λ × 2 seeds, the one the kill tests run); the newest such grid run,
    as the clone's store also holds the local one of the same bits."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-cifar10").experiment_id
    record = json.loads((project / f"models/cifar10/grids/{regularizer}/run.json").read_text())
    grid = client.search_runs([experiment], run_filter(record), order_by=["attributes.start_time DESC"])[0]
    return client.search_runs(
        [experiment], f"tags.wd_lab.grid_run = '{grid.info.run_id}' and tags.wd_lab.role = 'cifar10-grid-member'"
    )


def set_executor(project, **values) -> None:
    params = load_params(project / "params.yaml")
    for key, value in values.items():
        set_key(params, f"executor.{key}", value)
    write_params(project / "params.yaml", params)


def stage_killed_mid_run(project, cluster) -> tuple[int, str]:
    """The grid stage on the cluster: once the worker node trains a run (a `ray::on_worker` task) it is SIGKILLed;
    the stage's exit code and output. The stage never outlives this call."""
    with background(stage_command(GRID), cwd=project, **cluster.env) as process:
        deadline = time.monotonic() + 120
        while "ray::on_worker" not in cluster.worker_tasks(0):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the worker node never ran a task")
            time.sleep(0.1)
        time.sleep(0.5)  # inside the run (~3 s)
        cluster.kill_worker(0)
        log, _ = process.communicate(timeout=300)
    return process.returncode, log


def test_the_grid_on_two_nodes_gives_the_local_outputs(local_grid, tmp_path):
    project, expected = clone_project(local_grid[0], tmp_path / "project"), local_grid[1]
    with ray_cluster(workers=1) as cluster:
        run = dvc(project, "exp", "run", "-f", "-s", "-S", "executor.kind=ray", "train_images", **cluster.env)
        nodes = cluster.node_ids
        # then the rest of the branch: the ray-trained grids are the local ones to the byte, so nothing after reruns
        evaluated = dvc(project, "repro", "evaluate_images@cifar10", **cluster.env)
    assert ran_stages(run.stdout) == {f"train_images@cifar10-{r}" for r in REGULARIZERS}, (
        "--single-item: the grids alone, on the cluster"
    )
    assert outputs(project).items() <= expected.items(), (
        "same params and seeds: byte-identical weights, histories, layer norms and run records"
    )
    # every regulariser's grid, dropout's masks and L1's thresholding included, spread over both nodes
    spread = {member.data.tags["wd_lab.node"] for r in REGULARIZERS for member in grid_members(project, r)}
    assert spread == set(nodes.values())
    assert not {"headline_images@cifar10", "evaluate_images@cifar10"} & ran_stages(evaluated.stdout), (
        "the grids' folders hash as the local ones did: where their runs trained is in MLflow, not in the outputs"
    )
    assert (project / METRICS).read_bytes() == expected[METRICS], "the branch's metrics are local's, to the byte"

    members = grid_members(project)
    assert len(members) == 4 and all(m.info.status == "FINISHED" for m in members)
    assert {m.data.tags["wd_lab.executor"] for m in members} == {"ray"}
    assert {m.data.tags["wd_lab.node"] for m in members} == {nodes["head"], nodes["worker0"]}, "spread over both nodes"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    history = client.get_metric_history(members[0].info.run_id, "test_accuracy")
    assert [m.step for m in history] == list(range(7))
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1], (
        "a sqlite store: the worker sends each epoch back as it ends, and the driver logs it then"
    )


def test_a_worker_node_killed_mid_grid_loses_nothing(local_grid, tmp_path):
    project, expected = clone_project(local_grid[0], tmp_path / "project"), local_grid[1]
    set_executor(project, kind="ray", max_retries=3)
    with ray_cluster(workers=1) as cluster:
        returncode, log = stage_killed_mid_run(project, cluster)
        assert returncode == 0, log[-3000:]
        head = cluster.node_ids["head"]
    assert outputs(project).items() <= expected.items(), (
        "the run that died was trained again, from scratch, to the same bits"
    )
    members = grid_members(project)
    assert {m.data.tags["wd_lab.node"] for m in members} == {head}, "every run the worker had is retried on the head"
    assert len(members) == 4 and all(m.info.status == "FINISHED" for m in members)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    for member in members:
        steps = [m.step for m in client.get_metric_history(member.info.run_id, "test_accuracy")]
        assert steps == list(range(7)), "each epoch once: a retried run's epochs are not logged twice"


def test_a_failed_grid_keeps_its_finished_runs_and_a_rerun_trains_only_the_rest(local_grid, tmp_path):
    project, expected = clone_project(local_grid[0], tmp_path / "project"), local_grid[1]
    set_executor(project, kind="ray", max_retries=0)  # no retry: the run on the killed node is lost for this attempt
    with ray_cluster(workers=1) as cluster:
        returncode, log = stage_killed_mid_run(project, cluster)
    assert returncode == 2, log[-3000:]
    (line,) = [line for line in log.splitlines() if line.startswith("error:")]
    assert "runs did not finish" in line and "rerun the stage to train only the rest" in line
    finished = 4 - int(line.split("error: ")[1].split(" of ")[0])
    assert finished >= 1 and len(list((project / "cache/runs").rglob("*.pt"))) == finished

    set_executor(project, kind="local")  # the run cache serves either executor
    rerun = stage(GRID, project)
    assert f"{finished} of 4 runs were finished by an earlier attempt" in rerun.stderr
    assert rerun.stderr.count("epoch  6/6") == 4 - finished, "only the runs that did not finish are trained"
    assert outputs(project).items() <= expected.items()
    assert not list((project / "cache/runs").rglob("*.pt")), "a finished stage leaves no cached runs behind"


def test_ray_on_this_machine_without_an_address_gives_the_local_outputs(local_grid, tmp_path):
    project, expected = clone_project(local_grid[0], tmp_path / "project"), local_grid[1]
    set_executor(project, kind="ray", max_retries=3)
    stage(GRID, project)  # no RAY_ADDRESS: the stage starts a Ray instance of its own, shut down at the end
    assert outputs(project).items() <= expected.items()


def test_a_wrong_ray_address_stops_in_seconds_with_one_line(tmp_path):
    params = load_params()
    set_key(params, "executor.kind", "ray")
    write_params(tmp_path / "params.yaml", params)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    proc = stage(
        GRID,
        tmp_path,
        check=False,
        PYTHONPATH=str(ROOT),
        RAY_ADDRESS=address,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert address in line and "RAY_ADDRESS" in line and "ray start --head" in line
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists(), "nothing written"


@pytest.mark.parametrize(
    ("values", "device", "words"),
    [({"gpus_per_run": 0.5}, "cpu", "resolves `device` to cpu"), ({"gpus_per_run": 0}, "cuda", "gives them no GPU")],
    ids=["gpus-without-cuda", "cuda-without-gpus"],
)
def test_gpus_are_reserved_exactly_when_the_runs_compute_on_cuda(values, device, words):
    with pytest.raises(StageError, match=words):
        check_device(ExecutorSettings(kind="ray", **values), device)
    check_device(ExecutorSettings(kind="local", **values), device)  # the local executor reserves nothing


def test_an_address_that_is_not_host_port_is_one_line():
    with pytest.raises(StageError, match="not host:port"):
        check_address(ExecutorSettings(kind="ray", address="127.0.0.1:ray"))
