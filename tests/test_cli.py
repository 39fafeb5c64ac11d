"""Every stage is a command with --help, as dvc.yaml runs it; stages/ holds the entry points and nothing else."""

from __future__ import annotations

import re
import sys

import pytest

from wdlab.workspace import ROOT, run

STAGE_MODULES = sorted(set(re.findall(r"python -m stages\.(\w+)", (ROOT / "dvc.yaml").read_text())))


def test_dvc_yaml_names_every_stage_module():
    assert {"generate", "train_synthetic", "cross_validate", "evaluate_synthetic", "report_synthetic"} <= set(
        STAGE_MODULES
    )
    for name in STAGE_MODULES:
        assert (ROOT / "stages" / f"{name}.py").is_file()


def test_stages_holds_only_entry_points():
    """What dvc.yaml runs, and the regression check's command; shared code lives in wdlab/."""
    modules = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(STAGE_MODULES) | {"check"}


@pytest.mark.parametrize("name", STAGE_MODULES)
def test_stage_help(name):
    proc = run([sys.executable, "-m", f"stages.{name}", "--help"], ROOT)
    assert proc.returncode == 0
    assert f"python -m stages.{name}" in proc.stdout and "--params" in proc.stdout
    summary = proc.stdout.split("\n\n")[1].strip()
    assert len(summary) > 20, "the help starts with the module's docstring"
