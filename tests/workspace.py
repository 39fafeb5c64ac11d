"""Test workspace helpers: a temp copy of the project as a real git + DVC repo, params files, real subprocesses."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
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


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def stage_command(name: str) -> list[str]:
    """The command dvc.yaml runs for stage `name` ('train_synthetic@grid' for a foreach member), as argv
    after `python`: tests run a stage exactly as the pipeline does, with the paths dvc.yaml gives it."""
    stages = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]
    base, _, key = name.partition("@")
    cmd = stages[base]["do"]["cmd"].replace("${key}", key) if key else stages[base]["cmd"]
    program, *argv = shlex.split(cmd)
    assert program == "python", f"dvc.yaml runs {program} for {name}"
    return argv


def stage_args(name: str, *extra: str) -> list[str]:
    """The arguments after `python -m stages.<module>` that dvc.yaml gives stage `name`, plus `extra`."""
    return stage_command(name)[2:] + list(extra)


def stage(name: str, cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run stage `name` as dvc.yaml does (its module, paths and run), with `args` added, in `cwd`."""
    return run([sys.executable, *stage_command(name), *args], cwd=cwd, check=check, **env)


def dvc(cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check, **env)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd=cwd)


TRACKED_FOR_COPY = ("stages", "wdlab", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore", ".gitignore", "tests")


def copy_project(dest: Path) -> Path:
    """A fresh copy of the project's code at `dest`, as a new git + DVC repo with no outputs yet."""
    dest.mkdir(parents=True)
    for name in TRACKED_FOR_COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "tmp", "cache"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "tests@wd-lab.invalid")
    git(dest, "config", "user.name", "wd-lab tests")
    return dest


def commit_all(cwd: Path, message: str = "snapshot") -> None:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)
