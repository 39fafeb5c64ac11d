"""Session fixtures shared by the end-to-end test modules."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from tests.workspace import SYNTHETIC_BRANCH, commit_all, copy_project, dvc


class Reproduced(NamedTuple):
    path: Path  # the template project: clone it (tests.workspace.clone_project), never use or change it in place
    output: str  # stdout of its `dvc repro` of the SYNTHETIC_BRANCH


@pytest.fixture(scope="session")
def synthetic_template(tmp_path_factory) -> Reproduced:
    """The synthetic branch reproduced once per session at the committed params, in a fresh git + DVC repo.

    Two commits: the code first (so the MLflow runs carry `mlflow.source.git.commit`), then the outputs and
    dvc.lock (the baseline experiments start from). Each test module takes its own `clone_project` of it.
    """
    project = copy_project(tmp_path_factory.mktemp("synthetic-template") / "project")
    commit_all(project, "code")
    repro = dvc(project, "repro", *SYNTHETIC_BRANCH)
    commit_all(project, "baseline λ = 0")
    return Reproduced(project, repro.stdout)
