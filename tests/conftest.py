"""Session fixtures shared by the end-to-end test modules."""

from __future__ import annotations

import pytest

from tests.helpers.projects import Reproduced, reproduce_synthetic


@pytest.fixture(scope="session")
def synthetic_template(tmp_path_factory) -> Reproduced:
    """The synthetic branch reproduced once per session at the committed params, in a fresh git + DVC repo
    (tests.helpers.projects.reproduce_synthetic). Each test module takes its own `clone_project` of it."""
    return reproduce_synthetic(tmp_path_factory.mktemp("synthetic-template") / "project")
