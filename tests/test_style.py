"""The code passes the lint and the format check configured in pyproject.toml ([tool.ruff]), with the ruff that
requirements.txt pins, so `python -m pytest` (what .ci/run runs) includes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wdlab.workspace import ROOT

RUFF = Path(sys.executable).parent / "ruff"  # this venv's, installed from requirements.txt
COMMANDS = {  # what runs, and how to fix what it finds
    "check": (["check", "--no-cache", "--output-format", "concise", "."], "`ruff check --fix .` fixes some"),
    "format": (["format", "--no-cache", "--check", "."], "`ruff format .` rewrites the files"),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_ruff_passes(name):
    args, fix = COMMANDS[name]
    assert RUFF.is_file(), f"{RUFF} is missing: `pip install -r requirements.txt` installs it"
    proc = subprocess.run([str(RUFF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`ruff {' '.join(args)}` failed ({fix}):\n{proc.stdout}{proc.stderr}"
