"""How a test runs a stage: its entry point exactly as dvc.yaml's `cmd` gives it (module, paths and run); and which
stages a `dvc repro` or `dvc exp run` ran."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from wdlab.workspace import ROOT, run


def stage_command(name: str) -> list[str]:
    """The command dvc.yaml runs for stage `name` ('train_synthetic@l1' for a foreach member), as argv
    after `python`: tests run a stage exactly as the pipeline does, with the paths dvc.yaml gives it."""
    stages = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]
    base, _, key = name.partition("@")
    # a foreach over a list names each member by its item: ${item} and ${key} are the same string then
    cmd = stages[base]["do"]["cmd"].replace("${key}", key).replace("${item}", key) if key else stages[base]["cmd"]
    program, *argv = shlex.split(cmd)
    assert program == "python", f"dvc.yaml runs {program} for {name}"
    return argv


def stage_args(name: str, *extra: str) -> list[str]:
    """The arguments after `python -m stages.<module>` that dvc.yaml gives stage `name`, plus `extra`."""
    return stage_command(name)[2:] + list(extra)


def stage(name: str, cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run stage `name` as dvc.yaml does (its module, paths and run), with `args` added, in `cwd`."""
    return run([sys.executable, *stage_command(name), *args], cwd=cwd, check=check, **env)


def ran_stages(output: str) -> set[str]:
    """The stages DVC ran, from the stdout of `dvc repro` or `dvc exp run` (a stage restored from the run cache
    did not run)."""
    return set(re.findall(r"Running stage '([^']+)'", output))
