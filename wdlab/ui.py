"""The MLflow UI over the project's store, opened where each study is: `python -m wdlab.ui` starts `mlflow ui` on
127.0.0.1 and prints, per study, the link to its runs table and one per grid to its chart view of the results
against λ.

MLflow 3.17's UI opens an experiment in its GenAI mode (a traces overview) unless the URL says
`workflowType=machine_learning`, which every link here does; it does not read the experiment's
`mlflow.experimentKind` tag for that, and `mlflow ui` has no option for it (docs/mlflow.md). The chart links open
the shared views the training stages write (wdlab.tracking.strength_view). With a tracking server
(`tracking.uri: http://…`) it prints that server's links and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from wdlab.errors import StageError
from wdlab.settings import PARAMS_FILE, ParamsError, load_settings
from wdlab.tracking import SERVER_SCHEMES, VIEW_TAG, tracking_uri
from wdlab.workspace import kill_group

HOST = "127.0.0.1"  # the UI has no authentication and can delete runs: never on a network address
TRAINING = "workflowType=machine_learning"  # the UI's "Model training" mode: an experiment opens on its runs


def study_links(base: str, uri: str, experiments: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(what it shows, URL on the UI at `base`) for each of `experiments` in the store at `uri`: its runs table,
    then each grid's chart view against λ (the shared views the training stages wrote), by title."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            continue
        page = f"{base}/#/experiments/{experiment.experiment_id}"
        yield f"{name}: runs table", f"{page}?{TRAINING}"
        views = {
            key.removeprefix(VIEW_TAG): json.loads(value).get("wdLabTitle")
            for key, value in experiment.tags.items()
            if key.startswith(VIEW_TAG)
        }
        for key, title in sorted(views.items(), key=lambda view: str(view[1])):
            if title:  # ours; a view someone shared from the UI has no title to print
                yield f"{name}: {title}", f"{page}/runs?{TRAINING}&compareRunsMode=CHART&viewStateShareKey={key}"


def serve(uri: str, port: int, workers: int) -> subprocess.Popen:
    """`mlflow ui` on HOST:port over the store at `uri`, once it answers; StageError if it exits instead."""
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers: starts in seconds
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)]
    # A process group of its own (`mlflow ui` runs uvicorn as a child), stopped whole by `kill_group`.
    server = subprocess.Popen([*cmd, "--workers", str(workers)], env=env, start_new_session=True)
    try:
        if answers(server, f"http://{HOST}:{port}", timeout=120):
            return server
    except BaseException:  # Ctrl-C while it starts
        kill_group(server)
        raise
    kill_group(server)
    raise StageError(f"`mlflow ui` did not start on port {port} (see its output above): is the port taken? try --port")


def answers(server: subprocess.Popen, base: str, timeout: float) -> bool:
    """Whether the MLflow server `server` at `base` answers /health within `timeout` s; False once it has exited."""
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        time.sleep(0.3)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m wdlab.ui", description=__doc__.split("\n\n")[0])
    cli.add_argument("--port", type=int, default=5000, help="the UI's port on 127.0.0.1 (default 5000)")
    cli.add_argument("--workers", type=int, default=1, help="server workers (default 1: enough for one browser)")
    cli.add_argument("--params", type=Path, default=PARAMS_FILE, help="the params file (default params.yaml)")
    args = cli.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # `kill` stops the UI as Ctrl-C does, its server with it
    try:
        settings = load_settings(args.params)
        if not settings.tracking.enabled:
            raise StageError("tracking is off (`tracking.enabled: false` in params.yaml): there is no MLflow store")
        uri = tracking_uri(settings.tracking)
        studies = (settings.tracking.experiment_synthetic, settings.tracking.experiment_cifar10)
        if uri.startswith(SERVER_SCHEMES):  # a tracking server serves its own UI
            print_links(study_links(uri.rstrip("/"), uri, studies))
            return 0
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise StageError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run `dvc repro` first")
        server = serve(uri, args.port, args.workers)
    except (ParamsError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        print_links(study_links(f"http://{HOST}:{args.port}", uri, studies))
        print("Ctrl-C stops the UI.", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        kill_group(server)
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def print_links(links: Iterator[tuple[str, str]]) -> None:
    shown = list(links)
    if not shown:
        print("no study in the store yet: run `dvc repro`", flush=True)
    for what, url in shown:
        print(f"{what}\n    {url}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
