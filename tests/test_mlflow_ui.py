"""The MLflow UI over a store that a real pipeline run filled: the real server's REST API, then headless Chromium.

A copy of the session's real `dvc repro` of the synthetic branch (tests/conftest.py), then docs/mlflow.md's
`mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port …` started in that copy.
The browser checks need Debian's `chromium` (.ci/install-debian chromium) and skip, saying so, without it.
"""

from __future__ import annotations

import html
import math
import re
import shutil
from pathlib import Path

import pytest

from benchmarks.browser import MISSING, dom_text, find_chromium, render, run_links
from benchmarks.mlflow_server import get_bytes, get_json, mlflow_server, post_json
from wdlab.settings import REGULARIZERS
from wdlab.workspace import clone_project, git, load_params

pytestmark = pytest.mark.slow

EXPERIMENT = "wd-synthetic"
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("loss_curves", "loss_vs_lambda", "wnorm_vs_lambda", "wnorm_vs_epoch", "cv_choices")
PARAMS = load_params()
GRID = [float(v) for v in PARAMS["synthetic"]["strengths"]["l2"]]
SEEDS = [int(v) for v in PARAMS["synthetic"]["seeds"]]
EPOCHS = int(PARAMS["synthetic"]["train"]["epochs"])
WD = float(PARAMS["wd"])

# MLflow 3's UI opens in its GenAI mode (an experiment opens on a traces overview); this query picks the
# "Model training" mode, where an experiment opens on its runs table. The UI remembers the choice.
TRAINING = "?workflowType=machine_learning"


# ---------- fixtures: one pipeline run, one server, shared by the module ----------


@pytest.fixture(scope="module")
def project(synthetic_template, tmp_path_factory) -> Path:
    """A temp copy of the project (git + DVC) after one real `dvc repro` of the synthetic branch, its store its own."""
    dest = clone_project(synthetic_template.path, tmp_path_factory.mktemp("mlflow-ui") / "project")
    assert (dest / "mlflow.db").is_file() and (dest / "mlruns").is_dir()
    return dest


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """docs/mlflow.md's command, run in the copy: a relative sqlite URI resolves against the project root there."""
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    with mlflow_server(cwd=project, log=log, backend_store_uri="sqlite:///mlflow.db", timeout=60) as base:
        yield base


@pytest.fixture(scope="module")
def experiment(server) -> dict:
    return get_json(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]


@pytest.fixture(scope="module")
def runs(server, experiment) -> list[dict]:
    """Every run of the experiment, as runs/search returns it, with tags and params flattened to dicts."""
    found, token = [], None
    while True:
        body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000} | (
            {"page_token": token} if token else {}
        )
        page = post_json(server, "/api/2.0/mlflow/runs/search", body)
        found += page.get("runs", [])
        if not (token := page.get("next_page_token")):
            break
    for run in found:
        run["tags"] = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        run["params"] = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    return found


def by_role(runs: list[dict], role: str) -> list[dict]:
    return [run for run in runs if run["tags"].get("wd_lab.role") == role]


def grid_parent(runs: list[dict]) -> dict:
    """The l2 grid's parent run (each regulariser's grid has one)."""
    (parent,) = [run for run in by_role(runs, "synthetic-grid") if run["params"]["regularizer"] == "l2"]
    return parent


def grid_members(runs: list[dict]) -> list[dict]:
    parent_id = grid_parent(runs)["info"]["run_id"]
    return [run for run in runs if run["tags"].get("mlflow.parentRunId") == parent_id]


def headline_run(runs: list[dict]) -> dict:
    (run,) = by_role(runs, "synthetic-headline")
    return run


# ---------- the REST API of the real server ----------


def test_server_lists_the_experiment_with_artifacts_next_to_the_store(server, experiment, project):
    assert experiment["lifecycle_stage"] == "active"
    assert experiment["artifact_location"] == (project / "mlruns").as_uri()
    names = {
        e["name"] for e in post_json(server, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    }
    assert EXPERIMENT in names


def test_every_lambda_run_is_there_with_params_and_metric_history(server, runs, project):
    parent = grid_parent(runs)
    assert parent["info"]["run_name"] == f"l2 grid of {len(GRID)} strengths" and parent["info"]["status"] == "FINISHED"
    assert [float(v) for v in parent["params"]["strength_grid"].split(",")] == GRID and parent["params"][
        "regularizer"
    ] == "l2"
    # the commit of the code that ran: the last one to change code or params (the outputs were committed after)
    commit = git(project, "rev-list", "-1", "HEAD", "--", "stages", "wdlab", "dvc.yaml", "params.yaml").stdout.strip()
    assert parent["tags"]["mlflow.source.git.commit"] == commit

    members = grid_members(runs)
    assert len(members) == len(GRID) * len(SEEDS)
    assert {m["params"]["regularizer"] for m in by_role(runs, "synthetic-grid-member")} == set(REGULARIZERS)
    assert sorted((float(m["params"]["lambda"]), int(m["params"]["seed"])) for m in members) == sorted(
        (strength, seed) for strength in GRID for seed in SEEDS
    ), "one nested run per (λ, seed)"
    latest_parent = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    three = [m for m in members if float(m["params"]["lambda"]) == 3]
    finals = [next(x["value"] for x in m["data"]["metrics"] if x["key"] == "final_test_loss") for m in three]
    assert latest_parent["final_test_loss.mean.lambda_3"] == pytest.approx(sum(finals) / len(finals)), (
        "the parent carries the mean over seeds"
    )
    for member in members:
        strength, seed = float(member["params"]["lambda"]), int(member["params"]["seed"])
        assert member["info"]["run_name"] == f"l2 {strength:g} seed {seed}" and member["info"]["status"] == "FINISHED"
        assert member["params"]["regularizer"] == "l2" and float(member["params"]["strength"]) == strength
        assert member["params"]["train.epochs"] == str(EPOCHS)
        history = get_json(
            server,
            "/api/2.0/mlflow/metrics/get-history",
            run_id=member["info"]["run_id"],
            metric_key="test_loss",
            max_results=10_000,
        )["metrics"]
        assert sorted(m["step"] for m in history) == list(range(EPOCHS + 1)), f"λ={strength:g}: test_loss steps"
        assert all(math.isfinite(m["value"]) for m in history)
        latest = {m["key"]: m for m in member["data"]["metrics"]}
        assert latest["test_loss"]["step"] == EPOCHS and "final_test_loss" in latest and "w_norm" in latest

    curve = get_json(
        server, "/api/2.0/mlflow/metrics/get-history", run_id=three[0]["info"]["run_id"], metric_key="test_loss"
    )["metrics"]
    values = [m["value"] for m in sorted(curve, key=lambda m: m["step"])]
    assert values[-1] < values[0] / 10, "λ = 3: the test loss falls over training"


def test_headline_run_is_there(server, runs):
    run = headline_run(runs)
    assert run["info"]["run_name"] == f"headline l2 {WD:g}" and run["info"]["status"] == "FINISHED"
    assert float(run["params"]["lambda"]) == WD and "mlflow.parentRunId" not in run["tags"]
    assert {m["key"] for m in run["data"]["metrics"]} >= {"final_test_loss.mean", "final_test_loss.std"}
    members = [r for r in runs if r["tags"].get("mlflow.parentRunId") == run["info"]["run_id"]]
    assert sorted(int(m["params"]["seed"]) for m in members) == SEEDS
    history = get_json(
        server, "/api/2.0/mlflow/metrics/get-history", run_id=members[0]["info"]["run_id"], metric_key="test_loss"
    )["metrics"]
    assert sorted(m["step"] for m in history) == list(range(EPOCHS + 1))
    assert all(run["info"]["status"] == "FINISHED" for run in runs)


def test_report_figures_are_listed_and_downloadable_through_the_server(server, runs, project):
    """What the UI's artifact view does: list the study grid run's `report` folder, then GET /get-artifact for each
    file."""
    run = grid_parent(runs)
    run_id = run["info"]["run_id"]
    assert run["info"]["artifact_uri"] == f"{(project / 'mlruns').as_uri()}/{run_id}/artifacts"
    listing = get_json(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="report")
    files = {f["path"]: f for f in listing["files"]}
    assert {f"report/{name}.png" for name in FIGURES} | {"report/synthetic.md"} <= set(files)
    for name in FIGURES:
        served = get_bytes(server, "/get-artifact", path=f"report/{name}.png", run_uuid=run_id)
        assert served[:8] == PNG, f"{name}.png is not a PNG"
        assert served == (project / "reports/figures/synthetic" / f"{name}.png").read_bytes()
        assert int(files[f"report/{name}.png"]["file_size"]) == len(served)
    page = get_bytes(server, "/get-artifact", path="report/synthetic.md", run_uuid=run_id).decode()
    assert "## Finding" in page


def test_every_grid_run_carries_the_comparison_page(server, runs):
    grids = by_role(runs, "synthetic-grid")
    assert sorted(grid["params"]["regularizer"] for grid in grids) == sorted(REGULARIZERS), (
        "one grid run per regulariser"
    )
    for grid in grids:
        listing = get_json(server, "/api/2.0/mlflow/artifacts/list", run_id=grid["info"]["run_id"], path="comparison")
        names = {f["path"] for f in listing["files"]}
        assert {"comparison/regularizers_synthetic.md", "comparison/zeros_vs_strength.png"} <= names, grid["params"][
            "regularizer"
        ]


# ---------- the UI in headless Chromium ----------


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium() or pytest.skip(MISSING)


def test_experiment_page_lists_the_runs(chromium, server, experiment, runs, project, tmp_path):
    """The experiment page lists the top-level runs, newest first (λ runs nest under their grid run; the UI pages
    through them, "Load more" for the rest), each with the data it trained on in the Dataset column; screenshot:
    reports/mlflow_ui.png."""
    url = f"{server}/#/experiments/{experiment['experiment_id']}{TRAINING}"
    top = sorted(
        (run for run in runs if "mlflow.parentRunId" not in run["tags"]),
        key=lambda run: -int(run["info"]["start_time"]),
    )
    top_level = {run["info"]["run_id"]: run["info"]["run_name"] for run in top}
    newest = top[0]["info"]["run_id"]
    shot = project / "reports" / "mlflow_ui.png"
    shot.unlink(missing_ok=True)

    def shown(dom: str) -> dict[str, str]:
        return {run_id: name for run_id, name in run_links(dom).items() if run_id in top_level}

    def ready(dom: str) -> bool:
        visible = shown(dom)
        named = newest in visible and all(name == top_level[run_id] for run_id, name in visible.items())
        return named and "open-dataset-drawer" in dom  # the Dataset column's cells are drawn too

    dom = render(chromium, url, tmp_path / "profile", ready, screenshot=shot)
    text = dom_text(dom)
    visible = shown(dom)
    assert list(visible) == list(top_level)[: len(visible)], "the newest top-level runs, in order"
    assert len(visible) == len(top_level) or "Load more" in text, "the rest one click away"
    assert re.search(r"\d+ matching runs", text), text[:2000]
    assert {
        f"l2 grid of {len(GRID)} strengths",
        f"l1 grid of {len(PARAMS['synthetic']['strengths']['l1'])} strengths",
        f"headline l2 {WD:g}",
        f"cross-validation (5 folds, {len(SEEDS)} seeds)",
    } <= set(top_level.values())
    assert EXPERIMENT in text and "Run Name" in text
    assert re.search(r"<title>\s*Runs - Experiment", dom), "not the experiment's runs page"
    # the Dataset column names each run's training data with its digest: "synthetic-train (<digest>) training"
    trained_on = {
        f"synthetic-train ({i['dataset']['digest']})"
        for run in top
        if run["info"]["run_id"] in visible
        for i in run.get("inputs", {}).get("dataset_inputs", [])
        if i["dataset"]["name"] == "synthetic-train"
    }
    assert "Dataset" in text and trained_on, "the runs shown name no training data"
    assert trained_on <= {html.unescape(t) for t in re.findall(r'\btitle="(synthetic-train \([^"]*\))"', dom)}

    assert shot.is_file() and shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000, "no screenshot"
    kept = tmp_path / "mlflow_ui.png"
    shutil.copy2(shot, kept)
    print(f"\nMLflow UI screenshot: {kept}  (in the project copy: {shot})")


def test_grid_run_page_lists_its_children(chromium, server, experiment, runs, tmp_path):
    """The run page lists the grid's nested runs ten at a time ("Load more" for the rest of the λ × seed runs);
    the first ten, the last seed's, cover every λ of the grid."""
    parent = grid_parent(runs)
    children = {run["info"]["run_id"]: run["info"]["run_name"] for run in grid_members(runs)}
    url = f"{server}/#/experiments/{experiment['experiment_id']}/runs/{parent['info']['run_id']}{TRAINING}"

    def listed(dom: str) -> dict[str, str]:
        return {run_id: name for run_id, name in run_links(dom).items() if run_id in children}

    def ready(dom: str) -> bool:
        return len(listed(dom)) >= len(GRID)

    dom = render(chromium, url, tmp_path / "profile", ready)
    shown = listed(dom)
    assert all(children[run_id] == name for run_id, name in shown.items())
    assert {float(re.match(r"l2 (\S+) seed", name).group(1)) for name in shown.values()} == set(GRID)
    text = dom_text(dom)
    assert (
        f"l2 grid of {len(GRID)} strengths" in text
        and "Child runs" in text
        and "Load more" in text
        and "strength_grid" in text
    )


def test_artifact_view_shows_a_report_figure(chromium, server, experiment, runs, tmp_path):
    """The figure is fetched by the page itself (an <img> from a blob the UI downloaded from /get-artifact)."""
    run_id = grid_parent(runs)["info"]["run_id"]
    path = "report/loss_vs_lambda.png"
    url = f"{server}/#/experiments/{experiment['experiment_id']}/runs/{run_id}/artifacts/{path}{TRAINING}"

    def ready(dom: str) -> bool:
        for tag in re.findall(r"<img\b[^>]*>", dom):
            attrs = dict(re.findall(r'\b(alt|src)="([^"]*)"', tag))
            if html.unescape(attrs.get("alt", "")) == path and attrs.get("src", "").startswith("blob:"):
                return True
        return False

    text = dom_text(render(chromium, url, tmp_path / "profile", ready))
    assert "loss_vs_lambda.png" in text
