"""The CIFAR-10 branch through the real tools: download over HTTP from 127.0.0.1, train, evaluate, report."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from tests.helpers.projects import cifar_project
from tests.helpers.stages import ran_stages
from wdlab import workspace
from wdlab.settings import REGULARIZERS
from wdlab.workspace import clone_project, commit_all, dvc

pytestmark = pytest.mark.slow

TARGET = "report_cifar10"
TINY = {
    "cifar10.seeds": [0],  # one seed keeps the branch quick; tests/test_cifar10_train.py runs the stages on two
    "cifar10.data.train_subset": 0,
    "cifar10.data.valid_size": 60,
    "cifar10.model.width": 8,
    "cifar10.train.epochs": 3,
    "cifar10.train.batch_size": 50,
    "cifar10.strengths.l2": [0, 1.0e-2],  # the other regularisers keep params.yaml's single strengths
    "cifar10.strengths.decoupled": [0.05],
    "cifar10.strengths.l1": [1.0e-3],
}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """The branch reproduced once for the module: tests read it, and a test that changes a project takes its own
    clone."""
    return cifar_project(tmp_path_factory.mktemp("cifar-pipeline"), TINY, TARGET, "compare_cifar10")


def metrics(project) -> dict:
    return json.loads((project / "metrics/cifar10.json").read_text())


def test_the_branch_runs_and_the_model_learns(reproduced):
    project, output = reproduced
    assert ran_stages(output) == {
        "validate",
        "download",
        "headline_cifar10",
        *(f"train_cifar10@{r}" for r in REGULARIZERS),
        "evaluate_cifar10",
        TARGET,
        "compare_cifar10",
    }
    result = metrics(project)
    assert set(result["grid"]) == {"lambda_0", "lambda_0.01"}
    for run in [result["headline"], *result["grid"].values()]:
        assert run["test_accuracy"]["mean"] > 0.5, "the generated images carry a class signal: well above 10 % chance"
        assert run["epochs_run"] == 3 and not run["diverged"]
    assert result["grid"]["lambda_0.01"]["w_norm"]["mean"] < result["grid"]["lambda_0"]["w_norm"]["mean"]
    page = (project / "reports/cifar10.md").read_text()
    table_rows = re.findall(r"^\| (\S+) \| [\d.]+% \|", page, flags=re.MULTILINE)  # the metrics table: one row per λ
    assert table_rows == ["0", "0.01"], page
    for png in ("accuracy_vs_lambda", "gap_vs_lambda", "curves", "layer_norms"):
        assert (project / f"reports/figures/cifar10/{png}.png").stat().st_size > 10_000
    compared = (project / "reports/regularizers_cifar10.md").read_text()
    assert all(f"| {r} |" in compared for r in REGULARIZERS) and set(result["regularizers"]) == set(REGULARIZERS)
    data = torch.load(project / "data/cifar10/train.pt", weights_only=True)
    assert data["images"].dtype == torch.uint8 and data["images"].shape[1:] == (3, 32, 32)


def test_mlflow_has_a_parent_with_nested_runs_and_their_weights(reproduced):
    project, _ = reproduced
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-cifar10")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [
        r for r in runs if r.data.tags.get("wd_lab.role") == "cifar10-grid" and r.data.params["regularizer"] == "l2"
    ]
    assert {r.data.params["regularizer"] for r in runs if r.data.tags.get("wd_lab.role") == "cifar10-grid"} == set(
        REGULARIZERS
    )
    members = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {float(r.data.params["lambda"]) for r in members} == {0.0, 0.01}
    for member in members:
        assert member.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(member.info.run_id, "test_accuracy")] == [0, 1, 2, 3]
        weights = [a.path for a in client.list_artifacts(member.info.run_id, "model")]
        assert len(weights) == 1 and weights[0].endswith(".pt")


def test_exp_run_on_cifar_wd_reruns_only_the_headline_branch(reproduced, tmp_path):
    project = clone_project(reproduced[0], tmp_path / "project")
    before = metrics(project)
    run = dvc(project, "exp", "run", "-S", "cifar10.wd=0.01", TARGET)
    assert ran_stages(run.stdout) == {"validate", "headline_cifar10", "evaluate_cifar10", TARGET}
    assert "none retrained" in run.stdout + run.stderr, "λ = 0.01 is in the grid: its runs are taken, not trained again"
    after = metrics(project)
    assert after["headline"]["lambda"] == 0.01 and after["grid"] == before["grid"]
    # the headline run at λ = 0.01 is the grid's λ = 0.01 run: the same numbers, compared on what does not
    # saturate on these easy images (the loss and the weight norm), not on an accuracy of 100 %.
    for key in ("test_loss", "train_loss", "w_norm"):
        assert after["headline"][key] == after["grid"]["lambda_0.01"][key], key

    outside = dvc(project, "exp", "run", "-S", "cifar10.wd=0.003", TARGET)
    assert ran_stages(outside.stdout) == {"validate", "headline_cifar10", "evaluate_cifar10", TARGET}
    assert (
        "training headline run" in outside.stdout + outside.stderr and metrics(project)["headline"]["lambda"] == 0.003
    )


def test_same_seed_gives_identical_metrics_on_cpu(reproduced, tmp_path):
    project = clone_project(reproduced[0], tmp_path / "project")
    paths = [
        project / f"models/cifar10/grids/{r}/history.csv" for r in ("l2", "dropout")
    ]  # dropout: its masks are seeded too
    before = [path.read_bytes() for path in paths]
    for regularizer in ("l2", "dropout"):
        dvc(project, "repro", "--force", "--single-item", f"train_cifar10@{regularizer}")
    assert [path.read_bytes() for path in paths] == before


def test_the_headline_model_is_a_registry_artifact_dvc_gets_by_version(reproduced, tmp_path):
    """dvc.yaml's `artifacts:` entry, versioned as docs/mlflow.md says (`gto register`, a git tag), then downloaded
    with `dvc artifacts get` from the project's own cache: offline, no remote."""
    project = clone_project(reproduced[0], tmp_path / "project")
    commit_all(project, "the reproduced branch")
    gto = str(Path(sys.executable).parent / "gto")  # installed with DVC, which reads its tags
    workspace.run([gto, "register", "cifar10-headline", "--version", "v1.0.0"], cwd=project)
    got = tmp_path / "model.pt"
    fetched = dvc(tmp_path, "artifacts", "get", str(project), "cifar10-headline", "--rev", "v1.0.0", "-o", str(got))
    assert got.read_bytes() == (project / "models/cifar10/headline/model.pt").read_bytes(), fetched.stderr
    checkpoint = torch.load(got, weights_only=True)
    assert checkpoint["seeds"].tolist() == TINY["cifar10.seeds"] and len(checkpoint["state_dicts"]) == 1
