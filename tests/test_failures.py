"""Bad inputs between stages and diverging runs: a clear one-line error, or a recorded divergence, never a crash."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from tests.helpers.pages import table_rows
from tests.helpers.stages import stage
from wdlab.settings import REGULARIZERS
from wdlab.workspace import ROOT, clone_project, dvc, load_params, set_key, write_params

SYNTHETIC_STAGES = [
    "generate",
    "headline_synthetic",
    *(f"train_synthetic@{r}" for r in REGULARIZERS),
    "cross_validate",
    "evaluate_synthetic",
    "report_synthetic",
]


def run_stage(workdir, name, check=True):
    return stage(
        name, workdir, check=check, PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}"
    )


@pytest.fixture
def workdir(tmp_path):
    write_params(tmp_path / "params.yaml", load_params())
    shutil.copytree(ROOT / "reports/templates", tmp_path / "reports/templates")  # the pages' templates, as code
    return tmp_path


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is unreadable"),
        (
            lambda p: torch.save(
                {
                    "x_train": torch.zeros(20, 200),
                    "y_train": torch.zeros(19),
                    "x_test": torch.zeros(5, 200),
                    "y_test": torch.zeros(5),
                },
                p,
            ),
            "malformed train split",
        ),
        (lambda p: torch.save({"x_train": torch.zeros(20, 200)}, p), "lacks y_train"),
    ],
    ids=["deleted", "truncated", "wrong-shape", "missing-key"],
)
def test_broken_data_file_names_the_file_and_the_stage_that_makes_it(workdir, damage, words):
    run_stage(workdir, "generate")
    damage(workdir / "data/synthetic/dataset.pt")
    proc = run_stage(workdir, "train_synthetic@l2", check=False)
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "data/synthetic/dataset.pt" in line and words in line and "dvc repro generate" in line
    assert not (workdir / "models").exists(), "no output may be written from a broken input"


@pytest.mark.slow
def test_diverging_lambdas_are_recorded_and_the_rest_completes(workdir):
    params = load_params()
    set_key(params, "synthetic.train.lr", 0.05)  # ηλ = 5 > 2 at λ = 100: the decay step overshoots and explodes
    set_key(params, "synthetic.train.epochs", 20)
    write_params(workdir / "params.yaml", params)
    for name in SYNTHETIC_STAGES:
        run_stage(workdir, name)
    metrics = json.loads((workdir / "metrics/synthetic.json").read_text())
    diverged = {k for k, v in metrics["grid"].items() if v["diverged"]}
    assert diverged == {"lambda_100"} and metrics["grid"]["lambda_100"]["diverged"] == metrics["seeds"]
    assert metrics["grid"]["lambda_100"]["test_loss"]["mean"] is None  # NaN is written as null
    assert metrics["cv"]["best_lambda"] != 100.0
    page = (workdir / "reports/synthetic.md").read_text()
    (row,) = [row for row in table_rows(page.split("## Metrics per")[1]) if row[0] == "100"]
    folds = metrics["seeds"] * metrics["cv"]["folds"]
    assert row[-2:] == [str(metrics["seeds"]), f"{folds} of {folds}"], (
        "the table counts the seeds that diverged, and the CV folds, every one diverged too, as unstable"
    )
    rows = list(csv.DictReader((workdir / "results/synthetic/by_lambda.csv").open()))
    assert {r["lambda"] for r in rows if r["diverged"] != "0"} == {"100.0"}
    pngs = sorted((workdir / "reports/figures/synthetic").glob("*.png"))
    assert len(pngs) == 5, "every figure is drawn, the diverged λ left out of it"
    for png in pngs:
        assert png.stat().st_size > 10_000

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-synthetic")
    members = client.search_runs([experiment.experiment_id], "tags.`wd_lab.role` = 'synthetic-grid-member'")
    flags = {
        float(r.data.params["lambda"]): r.data.metrics["diverged"] for r in members if r.data.params["seed"] == "0"
    }
    assert flags[100.0] == 1.0 and flags[0.0] == 0.0
    assert all(r.info.status == "FINISHED" for r in members)


@pytest.mark.slow
def test_same_params_and_seed_give_identical_outputs_twice(synthetic_template, tmp_path):
    """The session's synthetic branch, reproduced again from scratch in a clone (`dvc repro --force`: the data drawn
    again, every grid trained again), gives the same bytes."""
    compared = (
        "metrics/synthetic.json",
        "results/synthetic/by_lambda.csv",
        "results/synthetic/by_seed.csv",
        "models/synthetic/grids/l1/history.csv",
        "results/synthetic/cv.csv",
    )
    first = {name: (synthetic_template.path / name).read_bytes() for name in compared}
    project = clone_project(synthetic_template.path, tmp_path / "project")
    params = set_key(load_params(project / "params.yaml"), "tracking.enabled", False)  # not what is compared
    write_params(project / "params.yaml", params)
    dvc(project, "repro", "--force", "evaluate_synthetic")
    assert {name: (project / name).read_bytes() for name in compared} == first
