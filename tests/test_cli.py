"""Every stage is a command with --help, as dvc.yaml runs it."""

from __future__ import annotations

import re

import pytest

from tests.workspace import ROOT, stage

STAGE_MODULES = sorted(
    {m for m in re.findall(r"python -m stages\.(\w+)", (ROOT / "dvc.yaml").read_text())}
)


def test_dvc_yaml_names_every_stage_module():
    assert {"generate", "train_synthetic", "cross_validate", "evaluate_synthetic", "report_synthetic"} <= set(STAGE_MODULES)
    for name in STAGE_MODULES:
        assert (ROOT / "stages" / f"{name}.py").is_file()


@pytest.mark.parametrize("name", STAGE_MODULES)
def test_stage_help(name):
    proc = stage(name, ROOT, "--help")
    assert proc.returncode == 0
    assert f"python -m stages.{name}" in proc.stdout and "--params" in proc.stdout
    summary = proc.stdout.split("\n\n")[1].strip()
    assert len(summary) > 20, "the help starts with the module's docstring"
