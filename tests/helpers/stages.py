"""How a test runs a stage: its entry point exactly as dvc.yaml's `cmd` gives it (module, paths and run).

    stage("train_synthetic@l2", project)          # run it in a subprocess, as `dvc repro` would (without DVC)
    stage_command("train_images@cifar10-l2")     # its argv, for a test that needs the process (background, kill)
    stage_args("download@cifar10")                # the arguments alone, for `parser().parse_args()` in-process
    ran_stages(dvc(project, "repro").stdout)      # the stages a `dvc repro` or `dvc exp run` ran
    wait_for_queue(project)                       # until `dvc queue start`'s experiments have all ended

The pipeline itself runs through DVC: `wdlab.workspace.dvc(project, "repro", ...)`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from wdlab.workspace import ROOT, dvc, run


def stage_command(name: str, *extra: str) -> list[str]:
    """The command dvc.yaml runs for stage `name` ('train_synthetic@l1' for a foreach member, 'train_images@cifar10-l2'
    for a matrix member) as argv, this venv's
    python first, then `extra`: tests run a stage exactly as the pipeline does, with the paths dvc.yaml gives it."""
    stages = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]
    base, _, key = name.partition("@")
    definition = stages[base]
    if "matrix" in definition:  # a matrix member is named by its values in order, joined by "-": cifar10-l2
        cmd = definition["cmd"]
        for axis, value in zip(definition["matrix"], key.split("-"), strict=True):
            cmd = cmd.replace(f"${{item.{axis}}}", value)
    elif key:  # a foreach over a list names each member by its item: ${item} and ${key} are the same string then
        cmd = definition["do"]["cmd"].replace("${key}", key).replace("${item}", key)
    else:
        cmd = definition["cmd"]
    program, *argv = shlex.split(cmd)
    assert program == "python", f"dvc.yaml runs {program} for {name}"
    return [sys.executable, *argv, *extra]


def stage_args(name: str, *extra: str) -> list[str]:
    """The arguments after `python -m stages.<module>` that dvc.yaml gives stage `name`, plus `extra`."""
    _, flag, _, *args = stage_command(name, *extra)
    assert flag == "-m", f"dvc.yaml runs {name} as a script, not `python -m <module>`"
    return args


def stage(
    name: str, cwd: Path, *args: str, check: bool = True, timeout: float = 900, **env: str
) -> subprocess.CompletedProcess:
    """Run stage `name` as dvc.yaml does (its module, paths and run), with `args` added, in `cwd`, output captured;
    `env` adds environment variables (wdlab.workspace.run: this venv first on PATH, no outside MLflow or DVC
    settings). With `check`, a non-zero exit fails the test with the stage's output."""
    return run(stage_command(name, *args), cwd=cwd, check=check, timeout=timeout, **env)


def ran_stages(output: str) -> set[str]:
    """The stages DVC ran, from the stdout of `dvc repro` or `dvc exp run` (a stage restored from the run cache
    did not run)."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def wait_for_queue(project: Path, timeout: float = 900, poll: float = 3) -> str:
    """`dvc queue status` once no queued experiment is running or waiting; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status").stdout
        if "Running" not in status and "Queued" not in status:
            return status
        time.sleep(poll)
    raise AssertionError(f"queue still busy after {timeout:.0f} s:\n{status}")
