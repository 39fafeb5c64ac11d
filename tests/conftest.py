"""Session fixtures shared by the end-to-end test modules."""

from __future__ import annotations

import tempfile

import pytest

from benchmarks.ray_cluster import NO_AUTH
from tests.helpers.projects import Reproduced, reproduce_synthetic


@pytest.fixture(scope="session")
def synthetic_template(tmp_path_factory) -> Reproduced:
    """The synthetic branch reproduced once per session at the committed params, in a fresh git + DVC repo
    (tests.helpers.projects.reproduce_synthetic). Each test module takes its own `clone_project` of it."""
    return reproduce_synthetic(tmp_path_factory.mktemp("synthetic-template") / "project")


@pytest.fixture(scope="module")
def ray_environment():
    """Every Ray process a module's tests start, stages included, without token auth (which would write
    ~/.ray/auth_token) and with its session files in a temp dir of its own (not the machine's shared /tmp/ray)."""
    with tempfile.TemporaryDirectory(prefix="wdray-", dir="/tmp") as ray_files, pytest.MonkeyPatch.context() as patch:
        for name, value in NO_AUTH.items():
            patch.setenv(name, value)
        patch.setenv("RAY_TMPDIR", ray_files)
        patch.delenv("RAY_ADDRESS", raising=False)
        yield
