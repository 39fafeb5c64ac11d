"""MLflow tracking against a real store: run states, nesting, a fast failure when the store is unreachable, the run an
output's run record finds without holding its id, and the data each training run names (found by `search_runs`, its
digest changing exactly when the data does)."""

from __future__ import annotations

import hashlib
import socket
import time

import mlflow
import pytest
import torch

from stages import train_synthetic
from tests.helpers.stages import stage_args
from wdlab.errors import StageError, StageInputError
from wdlab.files import read_json, save_tensors, write_json
from wdlab.lineage import content_digest, synthetic_datasets
from wdlab.settings import Settings, parse_settings
from wdlab.synthetic.data import load_dataset, make_dataset
from wdlab.tracking import Tracker, tracking_uri
from wdlab.workspace import free_port, load_params

TRACKING = parse_settings(load_params()).tracking


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri(TRACKING) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_environment_overrides_params(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(TRACKING) == "http://127.0.0.1:5000"


def test_nested_runs_params_and_history(store, tmp_path):
    tracker = Tracker(TRACKING, "test-experiment")
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    with tracker.run("grid", {"lr": 0.1}, "grid") as parent:
        with tracker.run("λ=3", {"lambda": 3.0}, "grid-member", nested=True) as child:
            tracker.log_history(child, series={"test_loss": [3.0, 2.0, 1.0]}, final={"final_test_loss": 1.0})
            tracker.log_artifacts(child, [artifact], folder="extra")
    client = mlflow.MlflowClient(store)
    child_run = client.get_run(child)
    assert child_run.info.status == "FINISHED"
    assert child_run.data.tags["mlflow.parentRunId"] == parent
    assert child_run.data.params == {"lambda": "3.0"}
    history = client.get_metric_history(child, "test_loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert [a.path for a in client.list_artifacts(child, "extra")] == ["extra/note.txt"]
    assert client.get_run(parent).data.params == {"lr": "0.1"}


def test_an_output_finds_the_run_that_wrote_it_without_its_id(store, tmp_path):
    """run.json holds the stage and the model's md5, no run id; they find the run (the newest, when the same bits were
    trained again), which carries them as tags with the output's path, and the report is attached to it."""
    tracker = Tracker(TRACKING, "test-experiment")
    model_md5 = save_tensors(tmp_path / "model.pt", {"weight": torch.ones(3)})
    assert model_md5 == hashlib.md5((tmp_path / "model.pt").read_bytes()).hexdigest()
    records = []
    for attempt in ("first", "again"):
        with tracker.run(attempt, {}, "grid") as run_id:
            pass
        records.append(tracker.run_record(run_id, "train_synthetic@l2", tmp_path, model_md5))
    first, again = records
    assert first == again == {"stage": "train_synthetic@l2", "model_md5": model_md5}, "the same bits, the same record"
    client = mlflow.MlflowClient(store)
    assert client.get_run(run_id).data.tags["wd_lab.output"] == tmp_path.as_posix()
    assert tracker.find_run(again) == run_id, "the newest of the runs that wrote these bits"
    assert tracker.find_run(first | {"stage": "train_synthetic@l1"}) is None
    assert tracker.find_run(first | {"model_md5": "0" * 32}) is None
    write_json(tmp_path / "run.json", again)
    (tmp_path / "page.md").write_text("# report")
    tracker.attach_report({"train_synthetic@l2": tmp_path / "run.json"}, [tmp_path / "page.md"])
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/page.md"]
    write_json(tmp_path / "run.json", {"stage": "train_synthetic@l2"})  # a record that cannot find its run
    with pytest.raises(StageInputError, match="run.json lacks model_md5: run `dvc repro train_synthetic@l2`"):
        read_json(tmp_path / "run.json", "train_synthetic@l2", required=("stage", "model_md5"))


def test_a_failing_block_marks_the_run_failed(store):
    tracker = Tracker(TRACKING, "test-experiment")
    with pytest.raises(RuntimeError), tracker.run("boom", {}, "test") as run_id:
        raise RuntimeError("training broke")
    assert mlflow.MlflowClient(store).get_run(run_id).info.status == "FAILED"


def test_an_interrupted_block_marks_the_run_killed(store):
    tracker = Tracker(TRACKING, "test-experiment")
    with pytest.raises(KeyboardInterrupt), tracker.run("ctrl-c", {}, "test") as run_id:
        raise KeyboardInterrupt
    assert mlflow.MlflowClient(store).get_run(run_id).info.status == "KILLED"


def test_unreachable_server_fails_in_seconds(monkeypatch):
    port = free_port()  # a port on which nothing listens
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StageError) as err:
        Tracker(TRACKING, "test-experiment")
    assert time.monotonic() - start < 30
    assert f"127.0.0.1:{port}" in str(err.value) and "tracking.enabled: false" in str(err.value)


def test_tracking_off_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    tracker = Tracker(TRACKING.model_copy(update={"enabled": False}), "x")
    with tracker.run("r", {"a": 1}, "test") as run_id:
        tracker.log_history(run_id, series={"loss": [1.0]})
    assert run_id is None and not (tmp_path / "never.db").exists()


def test_runs_left_running_by_a_killed_process_are_marked_killed(store):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    client = mlflow.MlflowClient(store)
    experiment_id = Tracker(TRACKING, "test-experiment").experiment_id
    orphan = client.create_run(experiment_id, tags={"wd_lab.pid": str(dead.pid), "wd_lab.host": socket.gethostname()})
    alive = client.create_run(experiment_id, tags={"wd_lab.pid": "1", "wd_lab.host": socket.gethostname()})
    Tracker(TRACKING, "test-experiment")  # a new stage starts
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_system_metrics_and_live_epochs(store, monkeypatch):
    """A training run samples CPU and memory while it runs; epochs logged one by one carry their own timestamps."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    tracker = Tracker(TRACKING, "test-experiment")
    with tracker.run("train", {}, "test", system_metrics=True) as run_id:
        for epoch in range(3):
            tracker.log_epoch(run_id, {"test_loss": 1.0 / (epoch + 1)}, epoch)
            time.sleep(0.6)
    client = mlflow.MlflowClient(store)
    metrics = client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    history = client.get_metric_history(run_id, "test_loss")
    assert [m.step for m in history] == [0, 1, 2]
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 1000, "each epoch logged when it ended"


def test_a_run_shorter_than_one_sampling_interval_still_has_system_metrics(store, monkeypatch):
    """MLflow's monitor publishes after each whole interval and stops without publishing when the run ends first: a
    run that short (a tiny Ray run logging to a server) still gets one sample."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "30")
    tracker = Tracker(TRACKING, "test-experiment")
    with tracker.run("grid", {}, "test"), tracker.run("short", {}, "test", nested=True, system_metrics=True) as run_id:
        pass
    assert "system/cpu_utilization_percentage" in mlflow.MlflowClient(store).get_run(run_id).data.metrics


# ---------- the data each run read ----------


def synthetic_settings(seeds: list[int], tracking: bool = True, **data: float) -> Settings:
    """The project's synthetic study shrunk to a test's size: `seeds`, l2 at two strengths, 3 epochs."""
    raw = load_params()
    raw["tracking"]["enabled"] = tracking
    study = raw["synthetic"]
    study["seeds"] = seeds
    study["data"] |= data
    study["train"]["epochs"] = 3
    study["strengths"]["l2"] = [0, 1]
    return parse_settings(raw)


def train_l2_grid(root, settings: Settings) -> train_synthetic.argparse.Namespace:
    """`generate` then `train_synthetic@l2` in `root`, with the paths dvc.yaml gives them."""
    args = train_synthetic.parser().parse_args(stage_args("train_synthetic@l2"))
    save_tensors(root / args.data, make_dataset(settings.synthetic.data, settings.synthetic.seeds))
    train_synthetic.main(settings, args)
    return args


def test_every_training_run_names_its_data_and_search_runs_finds_them(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = synthetic_settings([0, 1])
    args = train_l2_grid(tmp_path, settings)
    train, test = load_dataset(args.data, [0, 1])
    client = mlflow.MlflowClient(store)
    (experiment,) = [e.experiment_id for e in client.search_experiments() if e.name == "wd-synthetic"]

    def found(filter_string: str) -> set[str]:
        return {run.info.run_name for run in client.search_runs([experiment], filter_string)}

    members = {f"l2 {strength} seed {seed}" for strength in (0, 1) for seed in (0, 1)}
    assert found("dataset.name = 'synthetic-train'") == members | {"l2 grid of 2 strengths"}
    assert found("dataset.name = 'synthetic-test' and dataset.context = 'evaluation'") == found(
        "dataset.name = 'synthetic-train' and dataset.context = 'training'"
    )
    seed_0 = content_digest(train.x[:1], train.y[:1])
    assert found(f"dataset.name = 'synthetic-train' and dataset.digest = '{seed_0}'") == {
        "l2 0 seed 0",
        "l2 1 seed 0",
    }, "a member run names its own seed's draw"
    every_seed = content_digest(train.x, train.y)
    assert found(f"dataset.digest = '{every_seed}'") == {"l2 grid of 2 strengths"}

    (member,) = client.search_runs([experiment], "attributes.run_name = 'l2 1 seed 0'")
    inputs = {i.dataset.name: i for i in member.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic-train", "synthetic-test"}
    assert inputs["synthetic-test"].dataset.digest == content_digest(test.x[:1], test.y[:1])
    source = mlflow.data.get_source(inputs["synthetic-train"])
    assert (
        source.to_dict()["tags"]
        == {
            "generator": "wdlab.synthetic.data.make_dataset",
            "file": str(args.data),
            "split": "train",
            "seed": 0,
        }
        | settings.synthetic.data.model_dump()
    )

    unlogged = synthetic_settings([0, 1], tracking=False)
    again = train_synthetic.parser().parse_args([*stage_args("train_synthetic@l2"), "--out", "untracked"])
    train_synthetic.main(unlogged, again)
    for name in ("model.pt", "history.csv"):
        assert (tmp_path / again.out / name).read_bytes() == (tmp_path / args.out / name).read_bytes(), (
            f"{name}: the training is the same with tracking on and off"
        )


def test_a_digest_changes_exactly_when_the_data_does(tmp_path):
    def digests(seeds: list[int], **data: float) -> dict:
        settings = synthetic_settings(seeds, **data)
        path = tmp_path / "dataset.pt"
        save_tensors(path, make_dataset(settings.synthetic.data, seeds))
        made = synthetic_datasets(path, settings.synthetic, *load_dataset(path, seeds))
        return {seed: [(d.name, d.digest) for d in inputs] for seed, inputs in made.items()}

    first = digests([0, 1])
    assert digests([0, 1]) == first, "the same data made again: the same digests"
    other_seed = digests([0, 2])
    assert other_seed[0] == first[0] and other_seed[2] != first[1] and other_seed[None] != first[None]
    noisier = digests([0, 1], noise_std=0.1)
    assert noisier[0][0] != first[0][0] and noisier[0][1] != first[0][1], "other labels: other digests"
    assert [name for name, _ in first[0]] == ["synthetic-train", "synthetic-test"]
