"""The synthetic study through the real tools: `dvc repro`, `dvc exp run -S wd=3`, metrics, plots, MLflow."""

from __future__ import annotations

import json
import re

import mlflow
import pandas as pd
import pytest
import vl_convert

from tests.helpers.pages import table_rows
from tests.helpers.projects import headline
from tests.helpers.stages import ran_stages
from wdlab.settings import REGULARIZERS
from wdlab.workspace import SYNTHETIC_BRANCH, clone_project, dvc, git, load_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reproduced(synthetic_template, tmp_path_factory):
    """A copy of the session's real `dvc repro` of the synthetic branch (committed), and that repro's output,
    shared by this module's tests, which only read it (a test that changes a workspace takes `fresh`)."""
    dest = clone_project(synthetic_template.path, tmp_path_factory.mktemp("pipeline") / "project")
    return dest, synthetic_template.output


def test_repro_runs_every_synthetic_stage_and_meets_the_bar(reproduced):
    project, output = reproduced
    assert ran_stages(output) == {
        "validate",
        "generate",
        "headline_synthetic",
        *(f"train_synthetic@{r}" for r in REGULARIZERS),
        "cross_validate",
        "evaluate_synthetic",
        "report_synthetic",
        "compare_synthetic",
    }
    metrics = json.loads((project / "metrics/synthetic.json").read_text())
    base, three = metrics["grid"]["lambda_0"], metrics["grid"]["lambda_3"]
    # the means over the committed seeds land in the reference's range over 10 seeds (shared/REFERENCE.md §2)
    assert metrics["seeds"] >= 10
    assert (
        12.8 <= base["w_norm"]["mean"] <= 15.0
        and 70 <= base["test_loss"]["mean"] <= 112
        and base["train_loss"]["mean"] < 1e-4
    )
    assert 0.35 <= three["w_norm"]["mean"] <= 0.43 and 0.058 <= three["test_loss"]["mean"] <= 0.135
    assert three["test_loss"]["ci_high"] < base["test_loss"]["ci_low"], "the difference exceeds the seed spread"
    assert headline(project)["lambda"] == 0.0
    assert headline(project)["test_loss"] == pytest.approx(base["test_loss"], rel=1e-4), (
        "the headline is the grid's λ = 0 run"
    )
    assert metrics["cv"]["best_lambda"] > 0 and sum(metrics["cv"]["chosen"].values()) == metrics["seeds"]
    for figure in ("loss_curves", "loss_vs_lambda", "wnorm_vs_lambda", "wnorm_vs_epoch", "cv_choices"):
        png = project / "reports/figures/synthetic" / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    page = (project / "reports/synthetic.md").read_text()
    assert "## Finding" in page and "λ = 0" in page and "cross-validation" in page
    assert "is below that of λ = 0" in page and "## Against the reference" in page and "the grid's largest" in page
    assert "**Against the null model.**" in page and "seeds falls inside it" in page


def test_second_repro_does_nothing(reproduced):
    project, _ = reproduced
    again = dvc(project, "repro", *SYNTHETIC_BRANCH)
    assert ran_stages(again.stdout) == set()
    assert "Data and pipelines are up to date" in dvc(project, "status", "--with-deps", *SYNTHETIC_BRANCH).stdout


def test_metrics_and_plots_commands_work(reproduced, tmp_path):
    project, _ = reproduced
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    assert shown[""]["data"]["metrics/synthetic_headline.json"]["data"]["headline"] == headline(project)
    assert shown[""]["data"]["metrics/synthetic.json"]["data"]["cv"]["folds"] == 5
    out = tmp_path / "plots"
    dvc(project, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "Final loss vs strength" in html and "Synthetic headline run" in html
    figures = sorted((project / "reports/figures").glob("*synthetic/*.png"))
    assert len(figures) >= 6
    for figure in figures:  # the report figures as DVC image plots, copied beside the page
        shown = out / "static" / f"workspace_{'_'.join(figure.relative_to(project).parts)}"
        assert f'src="static/{shown.name}"' in html and shown.read_bytes() == figure.read_bytes()


def test_strength_axis_shows_every_grid_point_in_order(reproduced):
    """Rendered (Vega-Lite → SVG, offline), the λ axis of the strength plots labels each grid point, in order."""
    project, _ = reproduced
    grid = load_params(project / "params.yaml")["synthetic"]["strengths"]["l2"]
    spec = json.loads(dvc(project, "plots", "show", "--show-vega", "synthetic_loss_vs_lambda").stdout)
    svg = vl_convert.vegalite_to_svg(spec)
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert labels[: len(grid)] == [f"{strength:g}" for strength in grid], labels


def test_mlflow_holds_every_training_run(reproduced):
    project, _ = reproduced
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-synthetic")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("wd_lab.role"), []).append(run)
    grids = {run.data.params["regularizer"]: run for run in by_role["synthetic-grid"]}
    assert set(grids) == set(REGULARIZERS), "one parent run per regulariser's grid"
    grid = grids["l2"]
    members = [m for m in by_role["synthetic-grid-member"] if m.data.tags["wd_lab.grid_run"] == grid.info.run_id]
    assert len(members) == 10 * 10 and {m.data.params["regularizer"] for m in members} == {"l2"}
    assert {(float(m.data.params["strength"]), int(m.data.params["seed"])) for m in members} == {
        (strength, seed) for strength in (0, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100) for seed in range(10)
    }
    dropout = [
        m for m in by_role["synthetic-grid-member"] if m.data.tags["wd_lab.grid_run"] == grids["dropout"].info.run_id
    ]
    assert {float(m.data.params["strength"]) for m in dropout} == {0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9}
    assert all(run.info.status == "FINISHED" for run in runs)
    history = client.get_metric_history(members[0].info.run_id, "test_loss")
    assert [m.step for m in history] == list(range(101))
    artifacts = {a.path for a in client.list_artifacts(grid.info.run_id, "report")}
    assert "report/loss_vs_lambda.png" in artifacts and "report/synthetic.md" in artifacts


@pytest.fixture
def fresh(synthetic_template, tmp_path):
    """A copy of the committed, reproduced synthetic branch for one test that changes its workspace."""
    return clone_project(synthetic_template.path, tmp_path / "project")


def test_exp_run_l1_reports_exact_zeros_and_the_lasso_and_trains_only_the_headline(fresh):
    """`-S synthetic.regularizer=l1`: the L1 grid was trained (and cached) by the default repro, so only the headline
    trains; the study's page turns to L1, with its exact zeros and the scikit-learn lasso reference."""
    project = fresh
    run = dvc(project, "exp", "run", "-S", "synthetic.regularizer=l1", "-S", "wd=0.3", *SYNTHETIC_BRANCH)
    assert ran_stages(run.stdout) == {
        "validate",
        "headline_synthetic",
        "evaluate_synthetic",
        "report_synthetic",
        "compare_synthetic",
    }
    metrics = json.loads((project / "metrics/synthetic.json").read_text())
    assert metrics["regularizer"] == "l1" and headline(project)["zeros"]["mean"] > 0
    grid = metrics["grid"]
    assert (
        grid["lambda_3"]["zeros"]["mean"] == 200
        and grid["lambda_0.001"]["reference_zeros"]["mean"] > grid["lambda_0.001"]["zeros"]["mean"]
    )
    page = (project / "reports/synthetic.md").read_text()
    assert "# The `l1` regulariser" in page and "exact lasso" in page and "exact zeros" in page
    by_seed = pd.read_csv(project / "results/synthetic/by_seed.csv")
    assert set(by_seed["regularizer"]) == set(REGULARIZERS)


def test_a_strength_grid_change_retrains_that_regulariser_alone(fresh):
    project = fresh
    run = dvc(project, "exp", "run", "-S", "synthetic.strengths.dropout=[0, 0.5]", "compare_synthetic")
    trained = {name for name in ran_stages(run.stdout) if name.startswith(("train_", "headline_"))}
    assert trained == {"train_synthetic@dropout"}
    page = (project / "reports/regularizers_synthetic.md").read_text()
    assert "per-feature ridge" in page and ["dropout", "0.5"] in [row[:2] for row in table_rows(page)]


def test_exp_run_wd3_reruns_only_what_depends_on_wd(fresh):
    """`-S wd=3` retrains the headline, which reports itself; the study's pages are about the grid and stay (validate,
    which checks the changed params.yaml, writes the same stamp, so nothing else reruns)."""
    project = fresh
    before = headline(project)
    pages = {path: path.read_bytes() for path in (project / "reports").rglob("*") if path.is_file()}
    run = dvc(project, "exp", "run", "-S", "wd=3", *SYNTHETIC_BRANCH)
    assert ran_stages(run.stdout) == {"validate", "headline_synthetic"}
    assert {path: path.read_bytes() for path in (project / "reports").rglob("*") if path.is_file()} == pages
    after = headline(project)
    assert after["lambda"] == 3.0
    assert (
        70 <= before["test_loss"]["mean"] <= 112 and 0.058 <= after["test_loss"]["mean"] <= 0.135
    )  # the reference bands
    assert 12.8 <= before["w_norm"]["mean"] <= 15.0 and 0.35 <= after["w_norm"]["mean"] <= 0.43
    assert after["test_loss"]["std"] > 0, "the headline reports its spread over seeds"

    rows = json.loads(dvc(project, "exp", "show", "--json").stdout)
    exps = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                exps[exp.get("name") or rev["name"]] = data
    ((name, data),) = exps.items()
    wd = data["params"]["params.yaml"]["data"]["wd"]
    test_loss = data["metrics"]["metrics/synthetic_headline.json"]["data"]["headline"]["test_loss"]
    assert wd == 3 and test_loss == after["test_loss"], "dvc exp show carries the mean and the spread"

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    tagged = client.search_runs(
        [client.get_experiment_by_name("wd-synthetic").experiment_id], filter_string=f"tags.`dvc.exp_name` = '{name}'"
    )
    by_role: dict[str, list] = {}
    for run in tagged:
        by_role.setdefault(run.data.tags["wd_lab.role"], []).append(run)
    assert [(r.data.params["regularizer"], r.data.params["strength"]) for r in by_role["synthetic-headline"]] == [
        ("l2", "3")
    ]
    assert sorted(int(r.data.params["seed"]) for r in by_role["synthetic-headline-member"]) == list(range(10))
    tagged = by_role["synthetic-headline"]
    baseline = git(project, "rev-parse", "HEAD").stdout.strip()
    assert tagged[0].data.tags["dvc.exp_baseline_rev"] == baseline
    assert re.fullmatch("[0-9a-f]{40}", tagged[0].data.tags["mlflow.source.git.commit"])

    # the λ = 3 curves beside the committed λ = 0 ones
    diff_dir = project / "plots-diff"
    dvc(project, "plots", "diff", "HEAD", "-o", str(diff_dir))
    assert "workspace" in (diff_dir / "index.html").read_text() and "HEAD" in (diff_dir / "index.html").read_text()

    # back to λ = 0: restored from DVC's run cache, the original metrics exactly
    back = dvc(project, "exp", "run", "-S", "wd=0", *SYNTHETIC_BRANCH)
    assert "headline_synthetic" not in ran_stages(back.stdout)
    assert headline(project) == before
