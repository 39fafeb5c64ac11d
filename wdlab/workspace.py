"""A scratch copy of the project as a real git + DVC repo, run as a user would: params files, real subprocesses.

Used by the CI profile (.ci/profile.py), the benchmarks and the tests; nothing here is imported by a stage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]


def load_params(path: Path = ROOT / "params.yaml") -> dict:
    return YAML(typ="safe", pure=True).load(path.read_text())


def write_params(path: Path, params: dict) -> Path:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with path.open("w") as handle:
        yaml.dump(params, handle)
    return path


def set_key(params: dict, dotted: str, value: Any) -> dict:
    """Set params['a']['b'] = value for 'a.b'."""
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this venv's python and dvc first on PATH, no outside MLflow store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra)
    return env


def other_kernel_set() -> dict[str, str]:
    """Environment variables that make PyTorch compute with CPU kernels one level below this machine's own, so the
    last bits of results move as they do on another CPU: ATen's vectorised kernels (ATEN_CPU_CAPABILITY) and
    oneDNN's convolutions (ONEDNN_MAX_CPU_ISA). Baselines are made with a machine's own kernels, never with these.
    (ATen's unvectorised `default` set moves even `torch.randn`, but costs a CIFAR-10 step ~25 % more.)"""
    import torch

    native = torch.backends.cpu.get_cpu_capability().upper()  # DEFAULT, AVX2 or AVX512 on x86
    if native.startswith("AVX512"):
        return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (for a server a test or benchmark starts, or
    an address where nothing answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def kill_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group started with `start_new_session=True`, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def background(cmd: list[str], cwd: Path, **env: str) -> Iterator[subprocess.Popen]:
    """`cmd` running in a process group of its own, stdout and stderr piped together; the whole group is ended when
    the block exits, also when a test fails inside it, so no process outlives the test that started it.

    Ctrl-C (SIGINT) reaches it as it reaches a terminal's foreground job, also when this process was started with
    SIGINT ignored (`command &` in a script ignores it, and every child would inherit that)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=tool_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    try:
        yield proc
    finally:
        kill_group(proc)
        proc.stdout.close()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dvc(cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check, **env)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd=cwd)


# The synthetic branch's last stages: `dvc repro` of these three is the whole branch, `dvc exp run -S wd=3` of them
# validate and the headline alone (the study's pages do not depend on it).
SYNTHETIC_BRANCH = ("headline_synthetic", "report_synthetic", "compare_synthetic")

TRACKED_FOR_COPY = (
    "stages",
    "wdlab",
    "reports/templates",  # the pages' templates: report stages read them as they read their code
    "dvc.yaml",
    "params.yaml",
    ".dvc",
    ".dvcignore",
    ".gitignore",
    "tests",
)


def copy_project(dest: Path) -> Path:
    """A fresh copy of the project's code at `dest`, as a new git + DVC repo with no outputs yet."""
    dest.mkdir(parents=True)
    for name in TRACKED_FOR_COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "tmp", "cache")
            )
        elif src.exists():
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "tests@wd-lab.invalid")
    git(dest, "config", "user.name", "wd-lab tests")
    return dest


def commit_all(cwd: Path, message: str = "snapshot") -> None:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)


def clone_project(template: Path, dest: Path) -> Path:
    """An independent copy at `dest` of a project made by `copy_project` (usually already reproduced and committed).

    The copy has its own git repo, DVC cache (.dvc/cache), outputs, `mlflow.db` and `mlruns/`: what a test does in
    it (`dvc exp run`, the queue, a killed stage) never reaches the template or another copy. Left out: `.dvc/tmp`
    (the template's locks and DVC's per-repo timestamp; DVC makes new ones). DVC keeps no absolute path in the
    project (its state and index live in a per-user cache dir keyed by the repo's path), so `dvc status` in the
    copy says up to date. MLflow does keep absolute paths: see `repoint_mlflow_artifacts`.
    """

    def runtime_state(folder: str, names: list[str]) -> set[str]:
        return {"tmp"} if Path(folder) == template / ".dvc" else set()

    shutil.copytree(template, dest, symlinks=True, ignore=runtime_state)
    repoint_mlflow_artifacts(dest / "mlflow.db", template / "mlruns", dest / "mlruns")
    return dest


def repoint_mlflow_artifacts(store: Path, old: Path, new: Path) -> None:
    """Point the artifact locations of a copied sqlite MLflow store from `old` to `new` (its own `mlruns/`).

    MLflow writes absolute locations when it creates them: each experiment's `artifact_location` (a file:// URI,
    or a plain path for the Default experiment) and each run's `artifact_uri` under it. It has no API to change
    them afterwards (`mlflow db move-resources --artifact-policy retarget` moves experiments between workspaces
    and leaves run URIs as they are), so this rewrites the prefix of those two columns with SQL.
    Other absolute paths in the store are provenance, left as they are (tag `mlflow.source.name`: the script
    that ran, in the template).
    """
    if not store.is_file():
        return
    with contextlib.closing(sqlite3.connect(store)) as db, db:  # one transaction, committed on success
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            for before, after in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
                db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?)"
                    f" WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, before, len(before) + 1, before + "/"),
                )
