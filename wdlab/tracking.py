"""MLflow tracking on MLflow's own API: one store per project, a run per training stage, a run per strength of a grid
beside it, each seed's run nested under its strength's, every run naming the datasets it read.

The layout follows MLflow's conventions so the UI's own views show the study: settings are params and outcomes are
metrics under the same key in every run, so a strength run carries `strength` as a param and `test_loss_mean`,
`test_loss_ci_low`, … as metrics, and the chart view plots them against λ without expanding a run.

What MLflow does not do for us, and this adds: anchoring a relative sqlite store at the project root (so
`dvc exp run --queue` copies log to the user's store), failing in seconds on an unreachable server, ending
a killed stage's run as KILLED, marking runs orphaned by SIGKILL when the next stage starts, nested runs that
can be open side by side (a Ray grid's runs all train at once), and a run on a tracking server that another
process (a Ray worker) logs to by its id while it trains (`ServerLog`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdlab.errors import StageError
from wdlab.files import project_root, read_json
from wdlab.settings import TrackingSettings

if TYPE_CHECKING:
    from wdlab.lineage import DatasetInput

log = logging.getLogger("wd-lab.tracking")

ROLE_TAG, GRID_TAG = "wd_lab.role", "wd_lab.grid_run"  # what a run is; a strength run's grid (its stage's run)
PID_TAG, HOST_TAG = "wd_lab.pid", "wd_lab.host"  # who owns a RUNNING run, to end it if that process was killed
START_TAG = "wd_lab.pid_start"  # when that process started: a pid the kernel has since reused is not the owner
# The MLflow UI's shared views: an experiment tag holding a runs-page state (filter, charts) as JSON, opened by
# `#/experiments/<id>/runs?viewStateShareKey=<key>`; the UI's own "Share" button writes the same tag.
VIEW_TAG = "mlflow.sharedViewState."
SERVER_SCHEMES = ("http://", "https://")  # a tracking server: any process that reaches it can log to a run by its id
# A training run's DVC output: its stage in dvc.yaml, its path, and its model.pt's md5 (run_record)
STAGE_TAG, OUTPUT_TAG, MODEL_TAG = "dvc.stage", "wd_lab.output", "wd_lab.model_md5"


def fail_fast() -> None:
    """A remote server that is down fails this process's MLflow calls in seconds, not after MLflow's long retry
    schedule (unless the environment says otherwise). Called before MLflow is imported, which also keeps MLflow's
    usage telemetry off: where its config cannot be fetched (no internet) its thread unsets an environment variable
    while a tracking request's proxy lookup iterates os.environ, and that request fails with a KeyError."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri(settings: TrackingSettings) -> str:
    """MLFLOW_TRACKING_URI if set, else params.yaml's; a relative sqlite path is anchored at the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(project_root() / uri[len(prefix) :])
    return uri


def run_tags(role: str) -> dict[str, str]:
    """Where a run comes from: the git commit and, under `dvc exp run`, the DVC experiment."""
    tags = {ROLE_TAG: role}
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


def strength_run_name(regularizer: str, strength: float, seeds: int) -> str:
    """The MLflow name of one strength of a grid, over its seeds: `l2 3 over 10 seeds`."""
    return f"{regularizer} {strength:g} over {seeds} seeds"


def strength_view(title: str, grid_run: str, role: str, charts: Sequence[str]) -> dict[str, Any]:
    """The runs-page state that shows one grid's strength runs and, in the chart view, each of `charts` (metric
    keys of the strength runs) against `strength`: a scatter chart, one point per strength. `title` names the
    chart section and, for `python -m wdlab.ui`, the link (`wdLabTitle`, a key the UI ignores)."""
    section = f"wd-lab-{grid_run}"
    return {
        "wdLabTitle": title,
        "searchFilter": f"tags.`{GRID_TAG}` = '{grid_run}' and tags.`{ROLE_TAG}` = '{role}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "runsHiddenMode": "SHOW_ALL",  # the UI charts only the first 10 runs by default
        "compareRunSections": [
            {
                "uuid": section,
                "name": title,
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "compareRunCharts": [
            {
                "uuid": f"{section}-{metric}",
                "type": "SCATTER",
                "runsCountToCompare": 100,
                "metricSectionId": section,
                "deleted": False,
                "isGenerated": False,
                "xaxis": {"key": "strength", "type": "PARAM"},
                "yaxis": {"key": metric, "type": "METRIC"},
            }
            for metric in charts
        ],
    }


class Tracker:
    """Logs to MLflow, or does nothing when `tracking.enabled` is false."""

    def __init__(self, settings: TrackingSettings, experiment: str):
        self.enabled = settings.enabled
        self.uri = tracking_uri(settings) if self.enabled else None
        self._grid_of: dict[str, str] = {}  # strength run → its grid's run (the stage's)
        if not self.enabled:
            log.info("MLflow tracking is off (tracking.enabled: false)")
            return
        fail_fast()
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5")  # seconds; MLflow's default is 10
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        try:
            self.experiment_id = self._experiment(experiment)
            mlflow.set_experiment(experiment_id=self.experiment_id)
        except Exception as err:  # MLflow raises many kinds for an unreachable or broken store
            raise StageError(
                f"MLflow store {self.uri} is unusable ({_reason(err)}): start the server, fix "
                "MLFLOW_TRACKING_URI, or set `tracking.enabled: false` in params.yaml"
            ) from None
        log.info("MLflow: experiment '%s' in %s", experiment, self.uri)
        self._end_orphans()

    def _experiment(self, name: str) -> str:
        """The id of experiment `name`, created if it is missing, also when another process creates it at the same
        moment (two queued experiments starting at once on an empty store). MLflow's `set_experiment(name)` loses
        that race quietly: it returns the rival's experiment without making it the active one, so the stage's
        top-level run went to the Default experiment, out of sight of its nested runs and of every search here."""
        from mlflow.exceptions import MlflowException

        if (found := self.mlflow.get_experiment_by_name(name)) is not None:
            return found.experiment_id
        # Artifacts next to a sqlite store, not in the stage's working directory (a temp copy under the DVC queue).
        store = self.uri.removeprefix("sqlite:///") if self.uri.startswith("sqlite:") else None
        try:
            return self.mlflow.create_experiment(name, (Path(store).parent / "mlruns").as_uri() if store else None)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.mlflow.get_experiment_by_name(name).experiment_id  # the other process created it first

    def _end_orphans(self) -> None:
        """Mark KILLED the runs left RUNNING by a stage process of this machine that no longer exists (SIGKILL)."""
        orphans = self.mlflow.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'",
            output_format="list",
        )
        for run in orphans:
            pid = int(run.data.tags.get(PID_TAG, "0"))
            if pid and not _alive(pid, run.data.tags.get(START_TAG)):
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
        nested: bool | str | None = False,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = False,
        datasets: Sequence[DatasetInput] = (),
    ) -> Iterator[str | None]:
        """An MLflow run (nested under the active one if `nested` is True, under run `nested` if it is a run id) that
        ends FINISHED, FAILED, or KILLED on Ctrl-C; with `system_metrics`, MLflow samples CPU, memory (and GPU, where
        there is one) while it runs; `datasets` are logged as its inputs (the UI's Dataset column; `search_runs`
        filters on `dataset.name`, `dataset.digest`). Nested runs never become the active run, so several can be open
        at once (and end in any order)."""
        if not self.enabled:
            yield None
            return
        tags = self._tags(role, tags)
        if nested:
            parent = self.mlflow.active_run().info.run_id if nested is True else nested
            if parent in self._grid_of:  # a seed's run under a strength run: one search finds all of a grid's runs
                tags[GRID_TAG] = self._grid_of[parent]
            with self._side_run(name, params, tags, system_metrics, parent) as run_id:
                if datasets:
                    self._log_datasets(run_id, datasets)
                yield run_id
            return
        # The experiment by id, not the fluent API's active one: with two queued stages starting at once on a fresh
        # tracking server, a stage's run was seen landing in Default while its other runs went to this experiment.
        with self.mlflow.start_run(
            experiment_id=self.experiment_id, run_name=name, tags=tags, log_system_metrics=system_metrics
        ) as active:
            self.mlflow.log_params(params)
            if datasets:
                self._log_datasets(active.info.run_id, datasets)
            try:
                yield active.info.run_id
            except KeyboardInterrupt:
                self.mlflow.end_run("KILLED")  # MLflow would say FAILED
                raise

    @contextlib.contextmanager
    def strength_runs(
        self,
        regularizer: str,
        strengths: Sequence[float],
        params: Mapping[str, Any],
        role: str,
        name: Callable[[float], str],
        charts: Sequence[str],
        datasets: Sequence[DatasetInput] = (),
    ) -> Iterator[dict[float, str | None]]:
        """One top-level run per strength of the active (grid) run, {strength: run id}, open until the block ends,
        and a shared view of the MLflow UI, `<role>-<regularizer>`, that charts `charts` against the strength.

        Each carries the grid's `params`, its `regularizer`, `strength` and `lambda`, and the grid run's id (tag
        wd_lab.grid_run, which the seeds' runs under it carry too); its summary over seeds goes in with
        `log_history(run, {}, seed_aggregates(...))`, the same keys in every strength run, and each seed's run nests
        under it (`run(..., nested=runs[strength])`).
        Top level, not under the grid run: the runs table and chart view show top-level runs without expanding any.
        """
        if not self.enabled:
            yield dict.fromkeys(strengths)
            return
        grid = self.mlflow.active_run()
        tags = self._tags(role, {GRID_TAG: grid.info.run_id} if grid is not None else {})
        if grid is not None:  # the newest grid's view replaces the one an earlier run of this grid shared
            title = f"{grid.info.run_name}: against λ"
            self.share_view(f"{role}-{regularizer}", strength_view(title, grid.info.run_id, role, charts))
        with contextlib.ExitStack() as runs:
            opened: dict[float, str | None] = {}
            for strength in strengths:
                own = {"regularizer": regularizer, "strength": strength, "lambda": strength}
                opened[strength] = run_id = runs.enter_context(
                    self._side_run(name(strength), dict(params) | own, tags, False, None)
                )
                if datasets:
                    self._log_datasets(run_id, datasets)
                if grid is not None:
                    self._grid_of[run_id] = grid.info.run_id
            yield opened

    def share_view(self, key: str, state: Mapping[str, Any]) -> None:
        """A shared view of this experiment's runs page, opened by `…/runs?viewStateShareKey=<key>`."""
        if self.enabled:
            self.mlflow.MlflowClient().set_experiment_tag(self.experiment_id, VIEW_TAG + key, json.dumps(state))

    def _tags(self, role: str, tags: Mapping[str, str] | None) -> dict[str, str]:
        return run_tags(role) | dict(tags or {}) | _owner()

    @contextlib.contextmanager
    def _side_run(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        system_metrics: bool,
        parent: str | None,
    ) -> Iterator[str]:
        """A run that never becomes the active one, nested under run `parent` (or top level): what
        `mlflow.start_run(nested=True)` makes (the same tags, params and system metrics), through the client. MLflow's
        fluent API keeps one stack of active runs, in which two open siblings would nest in each other."""
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        client = self.mlflow.MlflowClient()
        if parent is not None:
            tags = dict(tags) | {MLFLOW_PARENT_RUN_ID: parent}
        run_id = client.create_run(self.experiment_id, tags=resolve_tags(dict(tags)), run_name=name).info.run_id
        client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
        monitor = _system_monitor(run_id, self.uri) if system_metrics else None
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if monitor is not None:
                monitor.finish()
            client.set_terminated(run_id, status)

    def worker_log(self, run_id: str | None, to_metrics: Callable[..., Mapping[str, float]]) -> ServerLog | None:
        """How another process (a Ray worker) logs run `run_id`'s epochs itself: when the store is a tracking server,
        which any machine may reach; None for a file store, which only this process writes."""
        if not self.enabled or run_id is None or not self.uri.startswith(SERVER_SCHEMES):
            return None
        return ServerLog(self.uri, run_id, to_metrics, float(os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"]))

    def _log_datasets(self, run_id: str, datasets: Sequence[DatasetInput]) -> None:
        """Run `run_id`'s inputs, in one request: each a metadata-only dataset (the data stays where it is) whose
        source is the recipe that makes it, tagged with its context (training, validation, evaluation)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput as Input
        from mlflow.entities import InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [
            Input(
                MetaDataset(CodeDatasetSource(dict(d.source)), name=d.name, digest=d.digest)._to_mlflow_entity(),
                [InputTag(MLFLOW_DATASET_CONTEXT, d.context)],
            )
            for d in datasets
        ]
        from mlflow.exceptions import MlflowException

        client = self.mlflow.MlflowClient()
        try:
            client.log_inputs(run_id, datasets=inputs)
        except MlflowException as err:
            if err.error_code != "BAD_REQUEST":
                raise
            # Two stages naming the same data at once: the store looks the dataset up, then inserts it, so the later
            # insert breaks its unique (experiment, name, digest) key and is rolled back whole. Again, the lookup
            # finds the other's row and links it; a request that is bad for any other reason fails the same way.
            client.log_inputs(run_id, datasets=inputs)

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
        self,
        run_id: str | None,
        series: Mapping[str, Sequence[float]],
        final: Mapping[str, float] | None = None,
        first_step: int = 0,
    ) -> None:
        """A finished run's per-epoch series (step = epoch, 0 = the initial model; the series start at `first_step`)
        and final values, in one batch."""
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(name, float(v), stamp, step)
            for name, values in series.items()
            for step, v in enumerate(values, start=first_step)
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

    def run_record(self, run_id: str | None, stage: str, output: Path | str, model_md5: str) -> dict[str, str]:
        """What a training stage writes beside its model (run.json) to link its output and its MLflow run both ways:
        the DVC stage and the md5 of its model.pt, which the params, seeds and code decide, become the run's tags (with
        the output's path) and the record. The run's id, times and host stay in MLflow: in the record they would
        change the output's hash, and dvc.lock, at every reproduction of the same bits."""
        self.set_tags(run_id, {STAGE_TAG: stage, OUTPUT_TAG: Path(output).as_posix(), MODEL_TAG: model_md5})
        return {"stage": stage, "model_md5": model_md5}

    def find_run(self, record: Mapping[str, Any]) -> str | None:
        """The MLflow run of this experiment that wrote the output of run record `record`, the newest where the stage
        trained the same bits again (the runs are interchangeable); None without one, or with tracking off."""
        if not self.enabled or not {"stage", "model_md5"} <= record.keys():
            return None
        runs = self.mlflow.search_runs(
            [self.experiment_id],
            filter_string=run_filter(record),
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        return runs[0].info.run_id if runs else None

    def attach_report(self, records: Mapping[str, Path], files: Sequence[Path], folder: str = "report") -> None:
        """Attach report files to the MLflow runs that wrote the training stages' outputs, found from their run
        records {stage name: path}."""
        for made_by, record in records.items():
            run_id = self.find_run(read_json(record, made_by=made_by))
            if run_id is not None:
                self.log_artifacts(run_id, files, folder=folder)
            elif self.enabled:
                log.warning("no MLflow run in %s wrote %s's output; report not attached", self.uri, made_by)


def run_filter(record: Mapping[str, Any]) -> str:
    """The `search_runs` filter for the run that wrote the output of a training stage's run record (run.json)."""
    return f"tags.`{STAGE_TAG}` = '{record['stage']}' and tags.`{MODEL_TAG}` = '{record['model_md5']}'"


class ServerLog:
    """A run on a tracking server, logged by id from another process (a Ray worker, while the run trains): its
    epochs as they end (step = epoch) and, every `sampling_interval` seconds, that machine's system metrics.

    Picklable; entered on the worker (`with log as on_epoch: ...`). Epochs reach the server once each and in order:
    a retried run skips those its earlier attempt logged (the same bits), and after the first failure to log one
    it stops trying. `delivered` then says how many of the run's first epochs are on the server; whoever gets the
    run's result logs the rest.
    """

    def __init__(self, uri: str, run_id: str, to_metrics: Callable[..., Mapping[str, float]], sampling_interval: float):
        self.uri, self.run_id, self.to_metrics, self.sampling_interval = uri, run_id, to_metrics, sampling_interval
        self.delivered: int | None = None  # asked from the server at the first epoch
        self._client: Any = None
        self._monitor: Any = None

    def __enter__(self) -> ServerLog:
        fail_fast()
        import mlflow

        self._client = mlflow.MlflowClient(self.uri)
        self._monitor = _system_monitor(self.run_id, self.uri, self.sampling_interval)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._monitor is not None:
            self._monitor.finish()
        self._client = self._monitor = None

    def __call__(self, epoch: int, *data: Any) -> None:
        from mlflow.entities import Metric

        if self._client is None:
            return  # gave up after a failure, or used outside `with`
        metrics = self.to_metrics(*data)
        try:
            if self.delivered is None:
                logged = self._client.get_metric_history(self.run_id, next(iter(metrics)))
                self.delivered = max((m.step for m in logged), default=-1) + 1
            if epoch != self.delivered:
                return  # logged by an earlier attempt of this run
            stamp = int(time.time() * 1000)
            self._client.log_batch(
                self.run_id, metrics=[Metric(name, float(v), stamp, epoch) for name, v in metrics.items()]
            )
            self.delivered += 1
        except Exception as err:  # the server went away: the run goes on, its result carries every epoch
            log.warning("MLflow run %s: epoch %d not logged live (%s)", self.run_id, epoch, _reason(err))
            self.delivered = self.delivered or 0
            self._client = None


def _system_monitor(run_id: str, uri: str, sampling_interval: float | None = None) -> SystemMetrics | None:
    """MLflow's system-metrics monitor (CPU, memory, disk, network, GPU where there is one) on run `run_id`,
    started; None where it cannot start (MLflow logs why)."""
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    try:
        options = {} if sampling_interval is None else {"sampling_interval": sampling_interval}
        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri, **options)
        metrics = SystemMetrics(monitor, mlflow.MlflowClient(uri), run_id)
        monitor.start()
        return metrics
    except Exception as err:
        log.warning("no system metrics for MLflow run %s (%s)", run_id, _reason(err))
        return None


class SystemMetrics:
    """A SystemMetricsMonitor that samples once more at `finish` when it has published nothing: MLflow's publishes
    after each whole sampling interval and stops without publishing when the run ends first, so a run shorter than
    one interval (plus the server's answer to its status check) would show no system metrics.

    Whether it published is asked of the store, through the client: the samples of one system metric before the
    monitor starts and after it stops (a resumed run, a retried Ray run, already holds some)."""

    PREFIX = "system/"  # MLflow's prefix of every system metric

    def __init__(self, monitor: Any, client: Any, run_id: str):
        self._monitor, self._client, self._run_id = monitor, client, run_id
        self._probe = next(iter(self._system_keys()), None)  # a metric the run already holds, to count again later
        self._before = self._samples(self._probe)

    def finish(self) -> None:
        self._monitor.finish()  # stops its thread and flushes what it queued
        try:
            if self._published():
                return
            self._monitor.collect_metrics()
            self._monitor.publish_metrics(self._monitor.aggregate_metrics())
            self._monitor.mlflow_logger.flush()
        except Exception as err:
            log.warning("no system metrics for MLflow run %s (%s)", self._run_id, _reason(err))

    def _published(self) -> bool:
        if self._probe is None:  # the run held none before: any now are the monitor's
            return bool(self._system_keys())
        return self._samples(self._probe) > self._before

    def _system_keys(self) -> list[str]:
        metrics = self._client.get_run(self._run_id).data.metrics  # each metric's latest value
        return sorted(key for key in metrics if key.startswith(self.PREFIX))

    def _samples(self, key: str | None) -> int:
        return 0 if key is None else len(self._client.get_metric_history(self._run_id, key))


def _owner() -> dict[str, str]:
    """This process, as the owner of the runs it opens: host, pid and (where /proc tells) when it started."""
    started = _process_start(os.getpid())
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()} | ({START_TAG: started} if started else {})


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields from the 3rd on follow the command name's ")"


def _alive(pid: int, started: str | None = None) -> bool:
    """Whether the process that tagged a run is still running: its pid exists and, where the run says when that
    process started, it is the same process (a stage killed long ago may have left its pid to another one)."""
    if started is not None and (now := _process_start(pid)) is not None and now != started:
        return False
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
