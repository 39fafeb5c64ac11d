"""The real MLflow tracking server (`mlflow ui`, or the team server `mlflow server` with its artifacts served) as a
subprocess on a free 127.0.0.1 port, and its REST API."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wdlab.ui import answers
from wdlab.workspace import free_port, kill_group, tool_env

HOST = "127.0.0.1"  # the UI has no authentication: never bind it beyond this machine

# MLflow 3's server also starts a job runner with seven Huey consumers (GenAI scoring, trace archival) and
# a queue directory in /dev/shm; the tracking UI and REST API do not use them. Off: faster start and stop. Its usage
# telemetry is off too, as in the stages (wdlab.tracking.fail_fast): on a machine without internet its thread
# unsets an environment variable while a request iterates os.environ.
QUIET = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def server_command(
    port: int, backend_store_uri: str = "sqlite:///mlflow.db", workers: int = 1, artifacts: Path | None = None
) -> list[str]:
    """docs/mlflow.md's `mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, from this
    venv; with `artifacts`, its team server `mlflow server --backend-store-uri postgresql+psycopg2://…
    --artifacts-destination …`, which stores the artifacts clients upload to it there.

    One worker instead of MLflow's default four: the same app, started in a third of the time.
    """
    destination = [] if artifacts is None else ["--artifacts-destination", str(artifacts)]
    return [
        sys.executable, "-m", "mlflow", "ui" if artifacts is None else "server",
        "--backend-store-uri", backend_store_uri, *destination,
        "--host", HOST, "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


def _log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def mlflow_server(
    cwd: Path,
    log: Path,
    backend_store_uri: str = "sqlite:///mlflow.db",
    timeout: float = 60,
    attempts: int = 3,
    artifacts: Path | None = None,
) -> Iterator[str]:
    """Start `mlflow ui` in `cwd` (a relative sqlite URI resolves there), or with `artifacts` `mlflow server` storing
    them there, yield its base URL, always stop it.

    Waits for /health with a bounded timeout; retries on another port if the chosen one was taken meanwhile.
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                server_command(port, backend_store_uri, artifacts=artifacts), cwd=cwd, env=tool_env(**QUIET),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        base = f"http://{HOST}:{port}"
        try:
            if answers(proc, base, timeout):
                yield base
                return
            if proc.poll() is None:
                raise AssertionError(f"MLflow server on {base} not up after {timeout:.0f} s; log:\n{_log_tail(log)}")
            # exited: the port was taken meanwhile (retry) or a real failure (raised below)
            tail = _log_tail(log)
            if "address already in use" not in tail.lower() or attempt == attempts:
                raise AssertionError(f"MLflow server exited with {proc.returncode}; log:\n{tail}")
        finally:
            kill_group(proc)


def _request(url: str, body: dict | None = None, timeout: float = 30) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{request.get_method()} {url} → HTTP {err.code}: {err.read()[:500]!r}") from None


def _url(base: str, endpoint: str, query: dict[str, Any]) -> str:
    return f"{base}{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def get_json(base: str, endpoint: str, /, **query: Any) -> dict:
    """GET {base}{endpoint}?query → parsed JSON,
    e.g. get_json(base, '/api/2.0/mlflow/experiments/get-by-name', experiment_name='x')."""
    return json.loads(_request(_url(base, endpoint, query)))


def post_json(base: str, endpoint: str, body: dict) -> dict:
    return json.loads(_request(f"{base}{endpoint}", body))


def get_bytes(base: str, endpoint: str, /, **query: Any) -> bytes:
    """GET → the raw body, e.g. get_bytes(base, '/get-artifact', path='report/x.png', run_uuid=run_id)."""
    return _request(_url(base, endpoint, query))
