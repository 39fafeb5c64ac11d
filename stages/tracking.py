"""MLflow tracking: one store for the project, parent runs per pipeline run, nested runs per λ."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stages.common import StageError, project_root
from stages.settings import TrackingSettings

log = logging.getLogger("wd-lab.tracking")

METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
PID_TAG, HOST_TAG = "wd_lab.pid", "wd_lab.host"  # who owns a RUNNING run, to end it if that process was killed


def tracking_uri(settings: TrackingSettings) -> str:
    """MLFLOW_TRACKING_URI if set, else params.yaml's; a relative sqlite path is anchored at the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(project_root() / uri[len(prefix) :])
    return uri


def run_tags(role: str) -> dict[str, str]:
    """Where a run comes from: the git commit and, under `dvc exp run`, the DVC experiment."""
    tags = {"wd_lab.role": role}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp_name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.exp_baseline_rev"] = baseline
    return tags


def training_run_name(run: str, lambdas: tuple[float, ...]) -> str:
    """The MLflow name of a training stage's run: `headline λ=3` or `grid of 10 λ`."""
    return f"headline λ={lambdas[0]:g}" if run == "headline" else f"grid of {len(lambdas)} λ"


def lambda_params(lambdas: tuple[float, ...]) -> dict[str, str]:
    return {"lambda": f"{lambdas[0]:g}"} if len(lambdas) == 1 else {"lambda_grid": ",".join(f"{v:g}" for v in lambdas)}


class Tracker:
    """Logs to MLflow, or does nothing when `tracking.enabled` is false."""

    def __init__(self, settings: TrackingSettings, experiment: str):
        self.enabled = settings.enabled
        if not self.enabled:
            log.info("MLflow tracking is off (tracking.enabled: false)")
            return
        # A remote server that is down must fail in seconds, not after MLflow's long retry schedule.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow

        self.mlflow = mlflow
        self.uri = tracking_uri(settings)
        mlflow.set_tracking_uri(self.uri)
        self.client = mlflow.MlflowClient()
        self.experiment_id = self._experiment(experiment)
        log.info("MLflow: experiment '%s' in %s", experiment, self.uri)
        self._end_orphans()

    def _end_orphans(self) -> None:
        """Mark KILLED the runs left RUNNING by a stage process of this machine that no longer exists (SIGKILL)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'",
            max_results=1000,
        )
        for run in runs:
            pid = int(run.data.tags.get(PID_TAG, "0"))
            if pid and not _alive(pid):
                self.client.set_terminated(run.info.run_id, status="KILLED")
                log.warning("MLflow run %s (%s) was left RUNNING by a killed process; marked KILLED", run.info.run_id, run.info.run_name)

    def _experiment(self, name: str) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            artifacts = None
            if self.uri.startswith("sqlite:"):
                # Next to the store, not in the stage's working directory (a temp copy under the DVC queue).
                artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception as err:  # MLflow raises many kinds for an unreachable or broken store
            raise StageError(
                f"MLflow store {self.uri} is unusable ({_reason(err)}): start the server, fix "
                "MLFLOW_TRACKING_URI, or set `tracking.enabled: false` in params.yaml"
            ) from None

    @contextlib.contextmanager
    def run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str], parent_id: str | None = None) -> Iterator[str | None]:
        """A run that ends FINISHED, or FAILED/KILLED when its block raises."""
        if not self.enabled:
            yield None
            return
        all_tags = dict(tags) | {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        status = "FAILED"
        try:
            self.log_params(run_id, params)
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str | None, series: Mapping[str, Sequence[float]] | None = None, final: Mapping[str, float] | None = None) -> None:
        """Per-epoch series (step = epoch, starting at 0 for the initial model) and final values."""
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [
            Metric(name, float(value), stamp, step)
            for name, values in (series or {}).items()
            for step, value in enumerate(values)
        ]
        metrics += [Metric(name, float(value), stamp, 0) for name, value in (final or {}).items()]
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    def log_artifacts(self, run_id: str | None, paths: Sequence[Path], folder: str | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def run_record(self, run_id: str | None) -> dict[str, str | None]:
        """What a training stage writes beside its model so later stages find its MLflow run."""
        return {"run_id": run_id, "tracking_uri": self.uri if self.enabled else None}

    def run_exists(self, run_id: str | None) -> bool:
        if not self.enabled or not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False


def attach_report(settings: TrackingSettings, experiment: str, records: Mapping[str, Path], files: Sequence[Path]) -> None:
    """Attach report files to the MLflow runs named in the training stages' run records {stage name: path}."""
    from stages.files import read_json

    tracker = Tracker(settings, experiment)
    for made_by, record in records.items():
        run_id = read_json(record, made_by=made_by).get("run_id")
        if tracker.run_exists(run_id):
            tracker.log_artifacts(run_id, files, folder="report")
        elif tracker.enabled:
            log.warning("the MLflow run of %s is not in %s; report not attached", made_by, tracker.uri)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _reason(err: Exception) -> str:
    text = str(err)
    if "Connection refused" in text or "Max retries" in text or "Failed to establish" in text:
        return "cannot connect"
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first_line[:120]


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    """Settings dataclass → {'train.lr': 0.003, ...} for MLflow params."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            out |= flatten(f"{prefix}.{f.name}" if prefix else f.name, getattr(obj, f.name))
        return out
    return {prefix: obj}


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
