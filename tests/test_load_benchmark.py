"""The load benchmark's own checks (benchmarks/load.py) on a real store: they count what a complete experiment
logged, and each sign of a lost or stuck run makes them say so."""

from __future__ import annotations

import mlflow
import pytest

from benchmarks.load import EXPERIMENT, Repetition, count_runs
from wdlab.settings import parse_settings
from wdlab.tracking import Tracker
from wdlab.workspace import load_params

TRACKING = parse_settings(load_params()).tracking
SEEDS, EPOCHS = 2, 3


@pytest.fixture
def client(tmp_path, monkeypatch) -> mlflow.MlflowClient:
    import mlflow.tracking.fluent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # restored after the test, whatever MLflow sets
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    return mlflow.MlflowClient(uri)


def headline(monkeypatch, name: str, epochs: list[int]) -> Tracker:
    """What one queued experiment logs: the headline's run, and a run per seed with each epoch in `epochs`."""
    monkeypatch.setenv("DVC_EXP_NAME", name)
    tracker = Tracker(TRACKING, EXPERIMENT)
    with tracker.run("headline l2 3", {}, "synthetic-headline"):
        for seed in range(SEEDS):
            with tracker.run(f"l2 3 seed {seed}", {}, "synthetic-headline-member", nested=True) as member:
                for epoch in epochs if seed == 0 else range(EPOCHS + 1):
                    tracker.log_epoch(member, {"test_loss": 1.0 / (1 + epoch)}, epoch)
    return tracker


def test_a_complete_experiment_counts_whole(client, monkeypatch):
    headline(monkeypatch, "whole-exp", list(range(EPOCHS + 1)))
    counts = count_runs(client, {"whole-exp": "3"}, SEEDS, EPOCHS)
    assert counts == {
        "runs_expected": 1 + SEEDS,
        "runs_found": 1 + SEEDS,
        "runs_running": 0,
        "runs_elsewhere": 0,
        "epochs_missing": 0,
        "killed_runs": 0,
    }


def test_each_sign_of_a_lost_run_is_counted(client, monkeypatch):
    tracker = headline(monkeypatch, "short-exp", [0, 1, 3])  # seed 0 lacks epoch 2
    client.create_run(tracker.experiment_id)  # left RUNNING
    client.set_terminated(client.create_run("0").info.run_id)  # in the Default experiment
    counts = count_runs(client, {"short-exp": "3", "lost-exp": "3.25"}, SEEDS, EPOCHS)
    assert counts["runs_expected"] == 2 * (1 + SEEDS) and counts["runs_found"] == 1 + SEEDS, "lost-exp logged none"
    assert (counts["epochs_missing"], counts["runs_running"], counts["runs_elsewhere"]) == (1, 1, 1)
    figures = dict(store="sqlite", experiments=2, landed=2, killed=None, wall_s=1, exp_show_s=1, ui_s=None)
    rep = Repetition(**figures, ui_again_s=None, load_before=0, load_after=0, **counts)
    assert rep.lost
