"""`dvc exp run -s` / `dvc repro -s` run the named stage alone, without `validate` first: DVC removes the stage's
outputs before it starts it, so the stage that refuses a value puts them back, byte for byte, before it exits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from stages import validate
from tests.helpers.stages import ran_stages
from wdlab.workspace import clone_project, commit_all, copy_project, dvc, git, load_params, set_key, write_params

# the headline stage's outputs: two cached (a folder and a file) and its uncached metrics file, which git tracks
OUTPUTS = ("models/synthetic/headline", "results/synthetic/headline_curve.csv", "metrics/synthetic_headline.json")
BOOKKEEPING = (Path(".git"), Path(".dvc/tmp"))  # git's refs and DVC's locks and index: everything else counts


def workspace(project: Path) -> dict[str, str]:
    """The hash of every file of the project but git's and DVC's bookkeeping: outputs, dvc.lock, DVC's cache."""
    return {
        str(path.relative_to(project)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in project.rglob("*")
        if path.is_file() and not any(path.relative_to(project).is_relative_to(folder) for folder in BOOKKEEPING)
    }


def refused(proc) -> str:
    """The stage's one line: it ran (no validate before it) and refused."""
    assert proc.returncode != 0
    assert ran_stages(proc.stdout) == {"headline_synthetic"}, proc.stdout
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture(scope="module")
def headline_project(tmp_path_factory) -> Path:
    """The synthetic headline run reproduced and committed (validate, generate, headline_synthetic)."""
    project = copy_project(tmp_path_factory.mktemp("single-item") / "template")
    commit_all(project, "code")
    dvc(project, "repro", "headline_synthetic")
    commit_all(project, "headline")
    return project


@pytest.mark.slow
def test_a_value_refused_under_single_item_leaves_every_output_as_it_was(headline_project, tmp_path):
    project = clone_project(headline_project, tmp_path / "project")
    before = workspace(project)
    assert all((project / path).exists() for path in OUTPUTS)

    line = refused(dvc(project, "exp", "run", "-s", "-S", "wd=-1", "headline_synthetic", check=False))
    assert "wd = -1 must be >= 0" in line and line.endswith("all are back, as dvc.lock records them"), line
    assert git(project, "status", "--porcelain").stdout.splitlines() == [" M params.yaml"]
    assert workspace(project) | {"params.yaml": ""} == before | {"params.yaml": ""}

    # the same through `dvc repro -s` after editing params.yaml by hand
    write_params(project / "params.yaml", set_key(load_params(project / "params.yaml"), "wd", "three"))
    line = refused(dvc(project, "repro", "-s", "headline_synthetic", check=False))
    assert "wd = 'three' must be a number" in line and line.endswith("all are back, as dvc.lock records them")
    # without -s, validate refuses it first, as ever: DVC removed nothing, so there is nothing to put back
    proc = dvc(project, "repro", "headline_synthetic", check=False)
    assert proc.returncode != 0 and ran_stages(proc.stdout) == {"validate"}, proc.stdout
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.endswith(validate.FIX), line
    git(project, "checkout", "params.yaml")
    assert workspace(project) == before and not git(project, "status", "--porcelain").stdout


@pytest.mark.slow
def test_an_output_in_no_cache_is_named(headline_project, tmp_path):
    """The uncached metrics file comes back from the copy DVC's run cache keeps; without that copy, it is named."""
    project = clone_project(headline_project, tmp_path / "project")
    metrics = project / "metrics/synthetic_headline.json"
    digest = hashlib.md5(metrics.read_bytes()).hexdigest()
    (project / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).unlink()

    write_params(project / "params.yaml", set_key(load_params(project / "params.yaml"), "wd", -1))
    line = refused(dvc(project, "repro", "-s", "headline_synthetic", check=False))
    assert line.endswith(f"{OUTPUTS[2]} are in no cache (git may hold them), the others are back"), line
    assert not metrics.exists() and all((project / path).exists() for path in OUTPUTS[:2])
    git(project, "checkout", "--", "params.yaml", "metrics/synthetic_headline.json")
    assert hashlib.md5(metrics.read_bytes()).hexdigest() == digest
