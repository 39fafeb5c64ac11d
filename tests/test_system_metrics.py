"""System metrics in MLflow against a real store: every monitored run gets at least one sample of its own, however
short, and the monitor is driven through MLflow's public names only."""

from __future__ import annotations

import ast
import inspect

import mlflow
import pytest

from wdlab import tracking
from wdlab.tracking import ServerLog, SystemMetrics

CPU = "system/cpu_utilization_percentage"


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "30")  # longer than any run below
    return uri


def test_each_short_attempt_of_a_run_adds_its_own_sample(store):
    """A retried Ray run logs to the same run by id: the second attempt finds the first one's sample on the server
    and still adds one of its own (MLflow's monitor, stopped before its first interval, would add none)."""
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("system-metrics")).info.run_id
    for _ in range(2):
        with ServerLog(store, run_id, lambda: {}, sampling_interval=30):
            pass
    assert [m.step for m in client.get_metric_history(run_id, CPU)] == [0, 1]


def test_the_monitor_is_driven_through_public_names_only():
    """No private attribute of an MLflow object (the monitor, the client, a run): only this class's own state."""
    source = inspect.getsource(SystemMetrics) + inspect.getsource(tracking._system_monitor)
    private = [
        ast.unparse(node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert private == []
