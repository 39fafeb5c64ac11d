"""The MLflow UI over a store that a real pipeline run filled: the real server's REST API, then headless Chromium.

A copy of the session's real `dvc repro` of the synthetic branch (tests/conftest.py), then docs/mlflow.md's
`mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port …` started in that copy.
The browser checks need Debian's `chromium` (.ci/install-debian chromium) and skip, saying so, without it.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.browser import MISSING, Page, dom_text, find_chromium, render, run_links
from benchmarks.mlflow_server import get_bytes, get_json, mlflow_server, post_json
from wdlab.settings import REGULARIZERS
from wdlab.workspace import clone_project, free_port, git, kill_group, load_params, tool_env

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


def experiment_tags(experiment: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in experiment.get("tags", [])}


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


def grid_run(runs: list[dict], regularizer: str = "l2") -> dict:
    """A regulariser's grid run (the stage's run: its params, data and report)."""
    (grid,) = [run for run in by_role(runs, "synthetic-grid") if run["params"]["regularizer"] == regularizer]
    return grid


def of_grid(runs: list[dict], role: str, grid: dict) -> list[dict]:
    """The grid's runs of `role`: its strength runs (top level) or its seed runs (each under its strength's)."""
    return [run for run in by_role(runs, role) if run["tags"].get("wd_lab.grid_run") == grid["info"]["run_id"]]


def latest(run: dict) -> dict[str, float]:
    """A run's metrics, each key's latest value (a grid run has none)."""
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


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
    grid = grid_run(runs)
    assert grid["info"]["run_name"] == f"l2 grid of {len(GRID)} strengths" and grid["info"]["status"] == "FINISHED"
    assert [float(v) for v in grid["params"]["strength_grid"].split(",")] == GRID
    assert grid["params"]["regularizer"] == "l2" and "mlflow.parentRunId" not in grid["tags"]
    # the commit of the code that ran: the last one to change code or params (the outputs were committed after)
    commit = git(project, "rev-list", "-1", "HEAD", "--", "stages", "wdlab", "dvc.yaml", "params.yaml").stdout.strip()
    assert grid["tags"]["mlflow.source.git.commit"] == commit

    strengths = {float(run["params"]["strength"]): run for run in of_grid(runs, "synthetic-grid-strength", grid)}
    assert sorted(strengths) == GRID, "one top-level run per λ of the grid"
    members = of_grid(runs, "synthetic-grid-member", grid)
    assert {m["params"]["regularizer"] for m in by_role(runs, "synthetic-grid-member")} == set(REGULARIZERS)
    assert sorted((float(m["params"]["lambda"]), int(m["params"]["seed"])) for m in members) == sorted(
        (strength, seed) for strength in GRID for seed in SEEDS
    ), "one run per (λ, seed)"
    assert len({frozenset(latest(run)) for run in strengths.values()}) == 1, "the same metric keys for every λ"
    for strength, run in strengths.items():
        assert (
            run["info"]["run_name"] == f"l2 {strength:g} over {len(SEEDS)} seeds"
            and "mlflow.parentRunId" not in (run["tags"])
        )
        assert run["params"]["seeds"] == str(len(SEEDS)) and run["params"]["lambda"] == run["params"]["strength"]
        own = [m for m in members if m["tags"]["mlflow.parentRunId"] == run["info"]["run_id"]]
        assert sorted(int(m["params"]["seed"]) for m in own) == SEEDS, f"λ={strength:g}: its seeds nest under it"
        finals = [latest(m)["final_test_loss"] for m in own]
        summary = latest(run)
        assert summary["test_loss_mean"] == pytest.approx(sum(finals) / len(finals)), "the mean over seeds"
        assert summary["test_loss_ci_low"] <= summary["test_loss_mean"] <= summary["test_loss_ci_high"]
        assert {"gap_loss_mean", "w_norm_mean", "w_norm_ci_low", "train_loss_mean"} <= set(summary)
    assert not [key for run in runs for key in latest(run) if "lambda" in key], "no metric key names a λ"
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
        final = {m["key"]: m for m in member["data"]["metrics"]}
        assert final["test_loss"]["step"] == EPOCHS and "final_test_loss" in final and "w_norm" in final
        assert member.get("inputs", {}).get("dataset_inputs"), "the seed's own data"

    three = [m for m in members if float(m["params"]["lambda"]) == 3]
    curve = get_json(
        server, "/api/2.0/mlflow/metrics/get-history", run_id=three[0]["info"]["run_id"], metric_key="test_loss"
    )["metrics"]
    values = [m["value"] for m in sorted(curve, key=lambda m: m["step"])]
    assert values[-1] < values[0] / 10, "λ = 3: the test loss falls over training"


def test_each_grid_shares_a_view_of_its_strength_runs(experiment, runs):
    """The experiment tag the UI's chart links open: a filter on the newest grid's strength runs and a scatter chart
    of each summary against `strength`."""
    for regularizer in REGULARIZERS:
        grid = grid_run(runs, regularizer)
        view = json.loads(experiment_tags(experiment)[f"mlflow.sharedViewState.synthetic-grid-strength-{regularizer}"])
        assert view["wdLabTitle"] == f"{grid['info']['run_name']}: against λ"
        assert grid["info"]["run_id"] in view["searchFilter"] and "synthetic-grid-strength" in view["searchFilter"]
        charts = [(c["type"], c["xaxis"]["key"], c["yaxis"]["key"]) for c in view["compareRunCharts"]]
        assert charts == [("SCATTER", "strength", y) for y in ("test_loss_mean", "gap_loss_mean", "w_norm_mean")]


def test_headline_run_is_there(server, runs):
    run = headline_run(runs)
    assert run["info"]["run_name"] == f"headline l2 {WD:g}" and run["info"]["status"] == "FINISHED"
    assert float(run["params"]["strength"]) == WD and "mlflow.parentRunId" not in run["tags"]
    grid_strength = next(r for r in by_role(runs, "synthetic-grid-strength") if r["params"]["regularizer"] == "l2")
    assert set(latest(run)) == set(latest(grid_strength)), "the same keys as a grid's strength runs: charted with them"
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
    run = grid_run(runs)
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
    """The experiment page lists the top-level runs, newest first (the seeds' runs nest under their strength's run;
    the UI pages through them, "Load more" for the rest), each with the data it trained on in the Dataset column;
    screenshot: reports/mlflow_ui.png."""
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
    started = {run["info"]["run_id"]: int(run["info"]["start_time"]) for run in top}
    # the newest by start time (the grid draws its rows by position: their order in the DOM need not be the table's)
    shown_starts = sorted((started[run_id] for run_id in visible), reverse=True)
    assert shown_starts == list(started.values())[: len(visible)], "the newest top-level runs"
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


def test_strength_run_page_lists_its_seed_runs(chromium, server, experiment, runs, tmp_path):
    """A strength run's page lists its per-seed runs, each with its own curves one click away."""
    grid = grid_run(runs)
    (three,) = [run for run in of_grid(runs, "synthetic-grid-strength", grid) if float(run["params"]["strength"]) == 3]
    children = {
        run["info"]["run_id"]: run["info"]["run_name"]
        for run in runs
        if run["tags"].get("mlflow.parentRunId") == three["info"]["run_id"]
    }
    url = f"{server}/#/experiments/{experiment['experiment_id']}/runs/{three['info']['run_id']}{TRAINING}"

    def listed(dom: str) -> dict[str, str]:
        return {run_id: name for run_id, name in run_links(dom).items() if run_id in children}

    def ready(dom: str) -> bool:
        return len(listed(dom)) >= min(len(SEEDS), 10)  # the page lists child runs ten at a time

    shown = listed(render(chromium, url, tmp_path / "profile", ready))
    assert all(children[run_id] == name for run_id, name in shown.items())
    assert {name for name in shown.values()} <= {f"l2 3 seed {seed}" for seed in SEEDS}


def test_readme_link_opens_the_runs_table_and_the_chart_of_test_loss_against_lambda(chromium, project, runs, tmp_path):
    """The README's way in, as a new user takes it: `python -m wdlab.ui` in the project, then its links in a browser
    that never saw the UI. The study's link lands on the runs table (not MLflow's GenAI overview); the l2 grid's
    chart link shows test loss, gap and ‖w‖ against λ, one point per λ of the grid, without expanding a run.
    Screenshot of the chart view: docs/mlflow_ui_chart.png is one."""
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "wdlab.ui", "--port", str(port)], cwd=project, env=tool_env(),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        links = printed_links(ui, log, timeout=120)
        runs_table = links[f"{EXPERIMENT}: runs table"]
        grid = grid_run(runs)
        chart = links[f"{EXPERIMENT}: {grid['info']['run_name']}: against λ"]
        strengths = {run["info"]["run_name"]: run for run in of_grid(runs, "synthetic-grid-strength", grid)}

        with Page(chromium, tmp_path / "first-visit") as page:
            # ready once it shows runs, or MLflow's GenAI overview ("No data available"), which fails below
            seconds = page.open(runs_table, lambda dom: bool(run_links(dom)) or "No data available" in dom, timeout=90)
            title, where = page.evaluate("document.title"), page.evaluate("location.hash")
            assert title.startswith("Runs - Experiment") and "/runs?" in where, f"landed on {title!r} at {where}"
            assert "overview" not in where and "workflowType=machine_learning" in where
            print(f"\nruns table of {len(runs)} runs drawn in {seconds:.1f} s")

        with Page(chromium, tmp_path / "chart-visit", window=(1600, 1000)) as page:
            page.open(chart, lambda dom: dom.count("js-plotly-plot") >= 3, timeout=90)
            page.wait(lambda dom: [len(trace["x"]) for trace in scatter_traces(page)] == [len(GRID)] * 3, timeout=30)
            traces = scatter_traces(page)
            shot = page.screenshot(tmp_path / "mlflow_ui_chart.png")
        assert len(traces) == 3, traces
        for trace, metric in zip(traces, ("test_loss_mean", "gap_loss_mean", "w_norm_mean"), strict=True):
            assert sorted(float(x) for x in trace["x"]) == GRID, "one point per λ of the grid"
            for x, y, name in zip(trace["x"], trace["y"], trace["text"], strict=True):
                run = strengths[name]
                assert float(x) == float(run["params"]["strength"]) and y == pytest.approx(latest(run)[metric])
        assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000
        print(f"MLflow UI chart view: {shot}")
    finally:
        kill_group(ui, grace=15)
    assert not [line for line in log.read_text().splitlines() if line.startswith("error:")]


def printed_links(ui: subprocess.Popen, log: Path, timeout: float) -> dict[str, str]:
    """What `python -m wdlab.ui` prints once its server answers: {what it shows: URL}, read from its log."""
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops the UI." not in (text := log.read_text()):
        assert ui.poll() is None, f"python -m wdlab.ui exited {ui.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no links after {timeout:.0f} s:\n{text[-3000:]}"
        time.sleep(0.5)
    found = re.findall(r"^(\S[^\n]*)\n    (http://\S+)$", text, flags=re.M)
    assert found, text[-3000:]
    return dict(found)


def scatter_traces(page: Page) -> list[dict]:
    """Each scatter chart's points as Plotly holds them: x (the strength param), y (the metric), text (run names)."""
    charts = page.evaluate(
        "[...document.querySelectorAll('.js-plotly-plot')].map(p => (p.data || [])"
        ".filter(t => t.type === 'scatter').map(t => ({x: [...t.x], y: [...t.y], text: [...t.text]})))"
    )
    return [trace for traces in charts or [] for trace in traces]


def test_artifact_view_shows_a_report_figure(chromium, server, experiment, runs, tmp_path):
    """The figure is fetched by the page itself (an <img> from a blob the UI downloaded from /get-artifact)."""
    run_id = grid_run(runs)["info"]["run_id"]
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
