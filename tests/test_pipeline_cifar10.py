"""The CIFAR-10 branch through the real tools: download over HTTP from 127.0.0.1, train, evaluate, report."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from stages import check
from tests.helpers.pages import table_rows
from tests.helpers.projects import cifar_project
from tests.helpers.stages import ran_stages
from wdlab import workspace
from wdlab.cifar10.model import PlainCNN, make_net
from wdlab.settings import REGULARIZERS
from wdlab.workspace import ROOT, clone_project, commit_all, dvc

pytestmark = pytest.mark.slow

TARGET = "report_images@cifar10"
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
    "cifar10.plain.model.channels": 4,  # the plain CNN's grid: the architecture axis, as small
    "cifar10.plain.train.epochs": 3,
    "cifar10.plain.train.batch_size": 50,
    "cifar10.plain.train.lr": 0.05,
    "cifar10.plain.l2": [0, 5.0e-2],
}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """The branch reproduced once for the module: tests read it, and a test that changes a project takes its own
    clone."""
    return cifar_project(
        tmp_path_factory.mktemp("cifar-pipeline"),
        TINY,
        TARGET,
        "compare_images@cifar10",
        "compare_architectures@cifar10",
    )


def metrics(project) -> dict:
    return json.loads((project / "metrics/cifar10.json").read_text())


def test_the_branch_runs_and_the_model_learns(reproduced):
    project, output = reproduced
    assert ran_stages(output) == {
        "validate",
        "download@cifar10",
        "headline_images@cifar10",
        *(f"train_images@cifar10-{r}" for r in REGULARIZERS),
        "evaluate_images@cifar10",
        TARGET,
        "compare_images@cifar10",
        "train_images_plain@cifar10",
        "compare_architectures@cifar10",
    }
    result = metrics(project)
    assert set(result["grid"]) == {"lambda_0", "lambda_0.01"}
    for run in [result["headline"], *result["grid"].values()]:
        assert run["test_accuracy"]["mean"] > 0.5, "the generated images carry a class signal: well above 10 % chance"
        assert run["epochs_run"] == 3 and not run["diverged"]
    assert result["grid"]["lambda_0.01"]["w_norm"]["mean"] < result["grid"]["lambda_0"]["w_norm"]["mean"]
    page = (project / "reports/cifar10.md").read_text()
    by_lambda = [row[0] for row in table_rows(page) if re.fullmatch(r"[\d.]+%", row[1])]  # the metrics table, per λ
    assert by_lambda == ["0", "0.01"], page
    for png in ("accuracy_vs_lambda", "gap_vs_lambda", "curves", "layer_norms"):
        assert (project / f"reports/figures/cifar10/{png}.png").stat().st_size > 10_000
    compared = (project / "reports/regularizers_cifar10.md").read_text()
    assert all(r in [row[0] for row in table_rows(compared)] for r in REGULARIZERS) and set(
        result["regularizers"]
    ) == set(REGULARIZERS)
    data = torch.load(project / "data/cifar10/train.pt", weights_only=True)
    assert data["images"].dtype == torch.uint8 and data["images"].shape[1:] == (3, 32, 32)


def test_the_plain_cnn_grid_is_trained_compared_and_covered_by_the_check(reproduced):
    project, _ = reproduced
    plain = json.loads((project / "metrics/cifar10_plain.json").read_text())
    assert plain["architecture"] == "plain" and set(plain["grid"]) == {"lambda_0", "lambda_0.05"}
    for run in plain["grid"].values():
        assert run["epochs_run"] == 3 and not run["diverged"] and run["test_accuracy"]["mean"] > 0.2
        assert set(run["layer_w_norm"]) == {"conv1", "conv2", "fc1", "fc2"}
    strong, free = (plain["grid"][key]["layer_w_norm"] for key in ("lambda_0.05", "lambda_0"))
    assert all(strong[layer]["mean"] < free[layer]["mean"] for layer in free), "λ shrinks every layer of the plain CNN"
    grid = torch.load(project / "models/cifar10/plain/l2/model.pt", weights_only=True)
    net = make_net(grid)  # the checkpoint names its net: architecture, channels, hidden
    net.load_state_dict(grid["state_dicts"][0])
    assert isinstance(net, PlainCNN) and grid["lambdas"].tolist() == [0.0, 0.05]
    assert "architecture" not in torch.load(project / "models/cifar10/grids/l2/model.pt", weights_only=True)

    page = (project / "reports/architectures_cifar10.md").read_text()
    assert "**Plain CNN**" in page and "**ResNet (BatchNorm)**" in page and "effective learning rate" in page
    nets = [row[0] for row in table_rows(page) if row[0] in ("Plain CNN", "ResNet (BatchNorm)")]
    assert nets.count("Plain CNN") == nets.count("ResNet (BatchNorm)") == 2, page  # one row per λ of each grid
    found = plain["findings"]
    assert found["plain"]["scale_invariant"] == "" and found["resnet"]["invariant_layers"] > 0
    assert found["plain"]["capacity"]["strength"] == 0.05 and found["plain"]["chosen"]["strength"] in (0, 0.05)
    assert "From λ = 0 to λ = 0.05, the strongest every seed finished" in page
    for png in ("accuracy_gap_vs_lambda", "layer_norms_vs_lambda"):
        assert (project / f"reports/figures/architectures_cifar10/{png}.png").stat().st_size > 10_000

    checks = check.load_checks(ROOT / "checks.yaml")  # every metric has a rule, so a baseline can be recorded
    assert "cifar10_plain" in checks["profiles"]["ci"]["studies"]
    tolerances = check.calibrate(plain, checks["studies"]["cifar10_plain"]["tolerances"], 3)
    assert tolerances["grid.lambda_0.layer_w_norm.fc1.mean"]["kind"] == "mean"
    invariants = list(check.INVARIANTS["cifar10_plain"](plain, 0.1))
    assert any("weight norm falls" in row.metric and row.ok for row in invariants)


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
    members = [r for r in runs if r.data.tags.get("wd_lab.grid_run") == parent.info.run_id and "seed" in r.data.params]
    assert {float(r.data.params["lambda"]) for r in members} == {0.0, 0.01}
    (plain,) = [r for r in runs if r.data.tags.get("wd_lab.role") == "cifar10-plain-grid"]
    assert plain.data.params["model.architecture"] == "plain" and plain.info.run_name.startswith("plain l2 grid")
    plain_members = [
        r for r in runs if r.data.tags.get("wd_lab.grid_run") == plain.info.run_id and "seed" in r.data.params
    ]
    assert sorted(r.info.run_name for r in plain_members) == ["plain l2 0 seed 0", "plain l2 0.05 seed 0"]
    for member in members:
        assert member.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(member.info.run_id, "test_accuracy")] == [0, 1, 2, 3]
        weights = [a.path for a in client.list_artifacts(member.info.run_id, "model")]
        assert len(weights) == 1 and weights[0].endswith(".pt")


def test_exp_run_on_cifar_wd_reruns_only_the_headline_branch(reproduced, tmp_path):
    project = clone_project(reproduced[0], tmp_path / "project")
    before = metrics(project)
    run = dvc(project, "exp", "run", "-S", "cifar10.wd=0.01", TARGET)
    assert ran_stages(run.stdout) == {"validate", "headline_images@cifar10", "evaluate_images@cifar10", TARGET}
    assert "none retrained" in run.stdout + run.stderr, "λ = 0.01 is in the grid: its runs are taken, not trained again"
    after = metrics(project)
    assert after["headline"]["lambda"] == 0.01 and after["grid"] == before["grid"]
    # the headline run at λ = 0.01 is the grid's λ = 0.01 run: the same numbers, compared on what does not
    # saturate on these easy images (the loss and the weight norm), not on an accuracy of 100 %.
    for key in ("test_loss", "train_loss", "w_norm"):
        assert after["headline"][key] == after["grid"]["lambda_0.01"][key], key

    outside = dvc(project, "exp", "run", "-S", "cifar10.wd=0.003", TARGET)
    assert ran_stages(outside.stdout) == {"validate", "headline_images@cifar10", "evaluate_images@cifar10", TARGET}
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
        dvc(project, "repro", "--force", "--single-item", f"train_images@cifar10-{regularizer}")
    assert [path.read_bytes() for path in paths] == before


def test_the_registry_holds_the_validation_chosen_model_with_its_metrics(reproduced, tmp_path):
    """dvc.yaml's `artifacts:` entry, versioned as docs/mlflow.md says (`gto register`, a git tag), then downloaded
    with `dvc artifacts get` from the project's own cache (offline, no remote): the study's regulariser at the
    strength validation chose, every seed's net, with that choice's metrics as metrics/cifar10.json records them."""
    project = clone_project(reproduced[0], tmp_path / "project")
    commit_all(project, "the reproduced branch")
    gto = str(Path(sys.executable).parent / "gto")  # installed with DVC, which reads its tags
    workspace.run([gto, "register", "cifar10-chosen", "--version", "v1.0.0"], cwd=project)
    got = tmp_path / "model.pt"
    fetched = dvc(tmp_path, "artifacts", "get", str(project), "cifar10-chosen", "--rev", "v1.0.0", "-o", str(got))
    assert got.read_bytes() == (project / "models/cifar10/chosen/model.pt").read_bytes(), fetched.stderr

    chosen = metrics(project)["chosen_by_validation"]
    regularizer = workspace.load_params(project / "params.yaml")["cifar10"]["regularizer"]
    record = {"regularizer": regularizer} | chosen
    checkpoint = torch.load(got, weights_only=True)
    assert checkpoint["metrics"] == record
    assert json.loads((project / "models/cifar10/chosen/metrics.json").read_text()) == record
    assert checkpoint["regularizer"] == regularizer and checkpoint["seeds"].tolist() == TINY["cifar10.seeds"]
    assert checkpoint["lambdas"].tolist() == [chosen["lambda"]] * len(TINY["cifar10.seeds"])

    # the nets are the grid's own at that strength, and load into the net the checkpoint names
    grid = torch.load(project / f"models/cifar10/grids/{regularizer}/model.pt", weights_only=True)
    members = [i for i, strength in enumerate(grid["lambdas"].tolist()) if strength == chosen["lambda"]]
    for net, member in zip(checkpoint["state_dicts"], members, strict=True):
        assert all(torch.equal(net[name], grid["state_dicts"][member][name]) for name in net)
        make_net(checkpoint).load_state_dict(net)
