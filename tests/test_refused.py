"""A value params.yaml cannot run with stops `dvc exp run` / `dvc repro` before any work: every output as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from dvc.repo import Repo

from stages import validate
from tests.helpers.projects import headline
from tests.helpers.stages import ran_stages, stage
from wdlab.workspace import ROOT, SYNTHETIC_BRANCH, clone_project, dvc, git, load_params, set_key, write_params

# (what the user sets with -S, words of the one line): each stage a user reaches with -S; the whole pipeline is the
# target, as `dvc exp run -S …` alone has it, so the CIFAR-10 branch (never reproduced here) is reached too
REFUSED = [
    ("wd=-1", "wd = -1 must be >= 0"),  # headline_synthetic
    ("wd=three", "wd = 'three' must be a number"),
    ("device=tpu", "device = 'tpu' must be one of auto, cpu, cuda, mps"),  # every training stage
    ("+synthetic.train.momentum=0.9", "unknown key 'synthetic.train.momentum'"),  # a new key takes `+` in DVC
    ("synthetic.strengths.l2=[-1]", "synthetic.strengths.l2 = [-1] every λ must be >= 0"),  # train_synthetic@l2
    ("cifar10.train.lr=0", "cifar10.train.lr = 0 must be > 0"),  # the CIFAR-10 training stages
]
# git's and DVC's own bookkeeping: `dvc exp run` leaves a ref in .git (the work tree is what `git status` checks)
# and locks and its index in .dvc/tmp. Everything else counts: outputs, dvc.lock, DVC's cache (so its run cache
# too) and MLflow's store (mlflow.db, mlruns/), so an unchanged hash there means no MLflow run either.
BOOKKEEPING = (Path(".git"), Path(".dvc/tmp"))


def workspace(project: Path) -> dict[str, str]:
    """The hash of every file of the project but git's and DVC's bookkeeping."""
    return {
        str(path.relative_to(project)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in project.rglob("*")
        if path.is_file() and not any(path.relative_to(project).is_relative_to(folder) for folder in BOOKKEEPING)
    }


def refusal(proc) -> str:
    """The stage's one line, beside DVC's own account of the failed stage."""
    assert proc.returncode != 0
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "failed to reproduce 'validate'" in proc.stderr, "refused by the validation stage, before any other"
    assert ran_stages(proc.stdout) <= {"validate"}, proc.stdout
    return line


def test_validate_is_the_only_stage_that_depends_on_no_other():
    """So every stage descends from it, and DVC runs it before it removes any stage's outputs."""
    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to the stage whose output it reads
        assert [stage.addressing for stage in graph if graph.out_degree(stage) == 0] == ["validate"]


def test_validate_writes_the_same_stamp_or_refuses_in_one_line(tmp_path):
    write_params(tmp_path / "params.yaml", load_params())
    stage("validate", tmp_path, PYTHONPATH=str(ROOT))
    write_params(tmp_path / "params.yaml", set_key(load_params(), "wd", -1))
    proc = stage("validate", tmp_path, check=False, PYTHONPATH=str(ROOT))
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: params.yaml: wd = -1 must be >= 0") and line.endswith(validate.FIX)
    assert (tmp_path / "data/params.valid").read_text() == validate.STAMP, "written when valid, left as it was when not"


@pytest.mark.slow
def test_a_refused_value_leaves_every_output_as_it_was(synthetic_template, tmp_path):
    project = clone_project(synthetic_template.path, tmp_path / "project")
    before, baseline = workspace(project), headline(project)
    for setting, words in REFUSED:
        line = refusal(dvc(project, "exp", "run", "-S", setting, check=False))
        assert words in line and line.endswith("`git checkout params.yaml` to return to the committed params"), line
        assert git(project, "status", "--porcelain").stdout.splitlines() == [" M params.yaml"]
        assert workspace(project) | {"params.yaml": ""} == before | {"params.yaml": ""}, f"-S {setting} changed files"
        git(project, "checkout", "params.yaml")

    # without `+`, DVC itself refuses a key params.yaml lacks, and params.yaml stays as it was too
    assert dvc(project, "exp", "run", "-S", "synthetic.train.momentum=0.9", check=False).returncode != 0
    # a value edited by hand and `dvc repro` of a CIFAR-10 stage: refused before the download stage is reached
    write_params(project / "params.yaml", set_key(load_params(project / "params.yaml"), "cifar10.wd", -0.1))
    assert "cifar10.wd = -0.1 must be >= 0" in refusal(dvc(project, "repro", "headline_images@cifar10", check=False))
    git(project, "checkout", "params.yaml")
    assert workspace(project) == before and not git(project, "status", "--porcelain").stdout

    # and the valid runs after them: -S wd=3 trains the headline alone, -S wd=0 restores it from DVC's run cache
    three = dvc(project, "exp", "run", "-S", "wd=3", *SYNTHETIC_BRANCH).stdout
    assert ran_stages(three) == {"validate", "headline_synthetic"}
    assert headline(project)["lambda"] == 3.0
    back = dvc(project, "exp", "run", "-S", "wd=0", *SYNTHETIC_BRANCH).stdout
    assert "Stage 'headline_synthetic' is cached" in back and headline(project) == baseline
