"""MLflow tracking on MLflow's own API: one store per project, a run per training stage, nested runs per λ, each
naming the datasets it read.

What MLflow does not do for us, and this adds: anchoring a relative sqlite store at the project root (so
`dvc exp run --queue` copies log to the user's store), failing in seconds on an unreachable server, ending
a killed stage's run as KILLED, and marking runs orphaned by SIGKILL when the next stage starts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdlab.errors import StageError
from wdlab.files import project_root, read_json
from wdlab.settings import TrackingSettings

if TYPE_CHECKING:
    from wdlab.lineage import DatasetInput

log = logging.getLogger("wd-lab.tracking")

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
    if commit := _git_commit():
        tags["mlflow.source.git.commit"] = commit
    for variable, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if value := os.environ.get(variable):
            tags[tag] = value
    return tags


@functools.cache
def _git_commit() -> str | None:
    """HEAD's commit, asked once per process (a stage logs a run per seed and strength)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    return None


def training_run_name(run: str, regularizer: str, strengths: Sequence[float]) -> str:
    """The MLflow name of a training stage's run: `headline l2 3` or `l1 grid of 9 strengths`."""
    return (
        f"headline {regularizer} {strengths[0]:g}"
        if run == "headline"
        else f"{regularizer} grid of {len(strengths)} strengths"
    )


def strength_params(regularizer: str, strengths: Sequence[float]) -> dict[str, str]:
    """Which regulariser and how strong, as MLflow params (compare and parallel-coordinates views filter on them)."""
    one = f"{strengths[0]:g}"
    described = (
        {"strength": one, "lambda": one}
        if len(strengths) == 1
        else {"strength_grid": ",".join(f"{v:g}" for v in strengths)}
    )
    return {"regularizer": regularizer} | described


def member_params(regularizer: str, strength: float, seed: int) -> dict[str, str | float | int]:
    """One (regulariser, strength, seed) run's own params; `lambda` is the strength too, under its usual name."""
    return {"regularizer": regularizer, "strength": strength, "lambda": strength, "seed": seed}


class Tracker:
    """Logs to MLflow, or does nothing when `tracking.enabled` is false."""

    def __init__(self, settings: TrackingSettings, experiment: str):
        self.enabled = settings.enabled
        self.uri = tracking_uri(settings) if self.enabled else None
        if not self.enabled:
            log.info("MLflow tracking is off (tracking.enabled: false)")
            return
        # A remote server that is down must fail in seconds, not after MLflow's long retry schedule.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5")  # seconds; MLflow's default is 10
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        try:
            if mlflow.get_experiment_by_name(experiment) is None and self.uri.startswith("sqlite:"):
                # Artifacts next to the store, not in the stage's working directory (a temp copy under the DVC queue).
                mlflow.create_experiment(
                    experiment, (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
                )
            self.experiment_id = mlflow.set_experiment(experiment).experiment_id
        except Exception as err:  # MLflow raises many kinds for an unreachable or broken store
            raise StageError(
                f"MLflow store {self.uri} is unusable ({_reason(err)}): start the server, fix "
                "MLFLOW_TRACKING_URI, or set `tracking.enabled: false` in params.yaml"
            ) from None
        log.info("MLflow: experiment '%s' in %s", experiment, self.uri)
        self._end_orphans()

    def _end_orphans(self) -> None:
        """Mark KILLED the runs left RUNNING by a stage process of this machine that no longer exists (SIGKILL)."""
        orphans = self.mlflow.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'",
            output_format="list",
        )
        for run in orphans:
            pid = int(run.data.tags.get(PID_TAG, "0"))
            if pid and not _alive(pid):
                self.mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")
                log.warning(
                    "MLflow run %s (%s) was left RUNNING by a killed process; marked KILLED",
                    run.info.run_id,
                    run.info.run_name,
                )

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        params: Mapping[str, Any],
        role: str,
        nested: bool = False,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = False,
        datasets: Sequence[DatasetInput] = (),
    ) -> Iterator[str | None]:
        """An MLflow run (nested under the active one if `nested`) that ends FINISHED, FAILED, or KILLED on Ctrl-C;
        with `system_metrics`, MLflow samples CPU, memory (and GPU, where there is one) while it runs; `datasets` are
        logged as its inputs (the UI's Dataset column; `search_runs` filters on `dataset.name`, `dataset.digest`)."""
        if not self.enabled:
            yield None
            return
        tags = run_tags(role) | dict(tags or {}) | {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
        with self.mlflow.start_run(
            run_name=name, nested=nested, tags=tags, log_system_metrics=system_metrics
        ) as active:
            self.mlflow.log_params(params)
            if datasets:
                self._log_datasets(datasets)
            try:
                yield active.info.run_id
            except KeyboardInterrupt:
                self.mlflow.end_run("KILLED")  # MLflow would say FAILED
                raise

    def _log_datasets(self, datasets: Sequence[DatasetInput]) -> None:
        """The active run's inputs, in one request: each a metadata-only dataset (the data stays where it is) whose
        source is the recipe that makes it."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        self.mlflow.log_inputs(
            datasets=[MetaDataset(CodeDatasetSource(dict(d.source)), name=d.name, digest=d.digest) for d in datasets],
            contexts=[d.context for d in datasets],
            tags_list=[None] * len(datasets),
        )

    def log_epoch(self, run_id: str | None, metrics: Mapping[str, float], epoch: int) -> None:
        """One epoch's metrics as it ends (step = epoch), so the UI draws the curves while the run trains."""
        if self.enabled and run_id is not None:
            self.mlflow.log_metrics(dict(metrics), step=epoch, run_id=run_id)

    def set_tags(self, run_id: str | None, tags: Mapping[str, str]) -> None:
        """Tags known only once a run has ended, such as the Ray node it ran on."""
        if self.enabled and run_id is not None:
            client = self.mlflow.MlflowClient()
            for name, value in tags.items():
                client.set_tag(run_id, name, value)

    def log_history(
        self, run_id: str | None, series: Mapping[str, Sequence[float]], final: Mapping[str, float] | None = None
    ) -> None:
        """A finished run's per-epoch series (step = epoch, 0 = the initial model) and final values, in one batch."""
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(name, float(v), stamp, step) for name, values in series.items() for step, v in enumerate(values)
        ]
        metrics += [Metric(name, float(v), stamp, 0) for name, v in (final or {}).items()]
        self.mlflow.MlflowClient().log_batch(run_id, metrics=metrics)  # MLflow splits it into request-sized chunks

    def log_artifacts(self, run_id: str | None, paths: Sequence[Path], folder: str | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        client = self.mlflow.MlflowClient()
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path=folder)

    def log_model(self, run_id: str, model: Any, example: Any, code: Path) -> str:
        """An `mlflow.pytorch` model with its signature and an input example, logged to run `run_id`, the package
        at `code` bundled so `mlflow.pytorch.load_model` works anywhere; returns the model's URI."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            signature = infer_signature(example.numpy(), model(example).numpy())
        with self.mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example.numpy(),
                code_paths=[str(code)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips MLflow's slow inference of them
                serialization_format="pickle",  # with the code bundled; torch.export would add ~7 s per model
            )
        return info.model_uri

    def run_record(self, run_id: str | None) -> dict[str, str | None]:
        """What a training stage writes beside its model so later stages find its MLflow run."""
        return {"run_id": run_id, "tracking_uri": self.uri}

    def attach_report(self, records: Mapping[str, Path], files: Sequence[Path], folder: str = "report") -> None:
        """Attach report files to the MLflow runs named in the training stages' run records {stage name: path}."""
        for made_by, record in records.items():
            run_id = read_json(record, made_by=made_by).get("run_id")
            if self._exists(run_id):
                self.log_artifacts(run_id, files, folder=folder)
            elif self.enabled:
                log.warning("the MLflow run of %s is not in %s; report not attached", made_by, self.uri)

    def _exists(self, run_id: str | None) -> bool:
        if not self.enabled or not run_id:
            return False
        try:
            self.mlflow.get_run(run_id)
            return True
        except Exception:
            return False


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
