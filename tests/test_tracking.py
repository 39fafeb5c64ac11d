"""MLflow tracking against a real store: run states, nesting, a fast failure when the store is unreachable, the run an
output's run record finds without holding its id, and the data each training run names (found by `search_runs`, its
digest changing exactly when the data does)."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import mlflow
import pytest
import torch

from stages import train_synthetic
from tests.helpers.stages import stage_args
from wdlab import ui
from wdlab.errors import StageError, StageInputError
from wdlab.files import read_json, save_tensors, write_json
from wdlab.lineage import content_digest, synthetic_datasets
from wdlab.settings import Settings, parse_settings
from wdlab.synthetic.data import load_dataset, make_dataset
from wdlab.tracking import Tracker, run_filter, tracking_uri
from wdlab.workspace import free_port, load_params, write_params

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


# ---------- the run layout of a grid ----------


def test_a_grid_logs_a_top_level_run_per_strength_with_the_seed_runs_under_it(store, tmp_path, monkeypatch):
    """What the UI's runs table and chart view show without expanding a run: the grid's run and one run per strength,
    `strength` a param and the summary over seeds under the same metric keys in each; each seed's run with its epochs
    nests under its strength's run, and the grid run is the one the stage's run record names."""
    monkeypatch.chdir(tmp_path)
    args = train_l2_grid(tmp_path, synthetic_settings([0, 1, 2]))
    client = mlflow.MlflowClient(store)
    (experiment,) = [e.experiment_id for e in client.search_experiments() if e.name == "wd-synthetic"]
    runs = client.search_runs([experiment], max_results=1000)
    top = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    (grid,) = [run for run in top if run.data.tags["wd_lab.role"] == "synthetic-grid"]
    record = json.loads((tmp_path / args.out / "run.json").read_text())
    assert client.search_runs([experiment], run_filter(record))[0].info.run_id == grid.info.run_id
    strengths = sorted((run for run in top if run is not grid), key=lambda run: float(run.data.params["strength"]))
    assert [run.info.run_name for run in strengths] == ["l2 0 over 3 seeds", "l2 1 over 3 seeds"]
    assert len(runs) == 1 + 2 + 2 * 3, "the grid, its strengths, a run per (strength, seed)"
    keys = {frozenset(run.data.metrics) for run in strengths}
    assert len(keys) == 1, "every strength run logs the same metric keys"
    (names,) = keys
    assert {"test_loss_mean", "test_loss_ci_low", "test_loss_ci_high", "gap_loss_mean", "w_norm_mean"} <= names
    assert not [key for run in runs for key in run.data.metrics if "lambda" in key], "no metric key names a λ"
    assert not grid.data.metrics, "the per-strength results live in the strength runs"
    for run in strengths:
        assert run.data.tags["wd_lab.role"] == "synthetic-grid-strength"
        assert run.data.tags["wd_lab.grid_run"] == grid.info.run_id
        assert run.data.params["regularizer"] == "l2" and run.data.params["lambda"] == run.data.params["strength"]
        assert run.data.params["seeds"] == "3" and run.data.params["train.epochs"] == "3"
        seeds = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert sorted(int(seed.data.params["seed"]) for seed in seeds) == [0, 1, 2]
        assert {seed.data.params["strength"] for seed in seeds} == {run.data.params["strength"]}
        assert {seed.data.tags["wd_lab.grid_run"] for seed in seeds} == {grid.info.run_id}
        finals = [seed.data.metrics["final_test_loss"] for seed in seeds]
        assert run.data.metrics["test_loss_mean"] == pytest.approx(sum(finals) / 3)
        assert (
            run.data.metrics["test_loss_ci_low"]
            < run.data.metrics["test_loss_mean"]
            < run.data.metrics["test_loss_ci_high"]
        )
        gaps = [seed.data.metrics["final_test_loss"] - seed.data.metrics["final_train_loss"] for seed in seeds]
        assert run.data.metrics["gap_loss_mean"] == pytest.approx(sum(gaps) / 3)
        history = client.get_metric_history(seeds[0].info.run_id, "test_loss")
        assert [m.step for m in history] == [0, 1, 2, 3], "each seed's epochs"

    links = dict(ui.study_links("http://127.0.0.1:5000", store, ["wd-synthetic", "wd-cifar10"]))
    assert links == {
        "wd-synthetic: runs table": f"http://127.0.0.1:5000/#/experiments/{experiment}?workflowType=machine_learning",
        "wd-synthetic: l2 grid of 2 strengths: against λ": f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"
        "?workflowType=machine_learning&compareRunsMode=CHART&viewStateShareKey=synthetic-grid-strength-l2",
    }, "python -m wdlab.ui's links: the runs table, the grid's chart view; no link to a study not in the store"


def test_the_ui_command_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert ui.main([]) == 2
    assert (
        capsys.readouterr().err == "error: params.yaml not found: run from the project root, where params.yaml lives\n"
    )
    write_params(tmp_path / "params.yaml", load_params())
    assert ui.main([]) == 2
    assert capsys.readouterr().err == f"error: no MLflow store at {tmp_path / 'mlflow.db'}: run `dvc repro` first\n"


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
    every_seed_runs = {"l2 grid of 2 strengths", "l2 0 over 2 seeds", "l2 1 over 2 seeds"}
    assert found("dataset.name = 'synthetic-train'") == members | every_seed_runs
    assert found("dataset.name = 'synthetic-test' and dataset.context = 'evaluation'") == found(
        "dataset.name = 'synthetic-train' and dataset.context = 'training'"
    )
    seed_0 = content_digest(train.x[:1], train.y[:1])
    assert found(f"dataset.name = 'synthetic-train' and dataset.digest = '{seed_0}'") == {
        "l2 0 seed 0",
        "l2 1 seed 0",
    }, "a member run names its own seed's draw"
    every_seed = content_digest(train.x, train.y)
    assert found(f"dataset.digest = '{every_seed}'") == every_seed_runs, "the grid run and its strength runs"

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
