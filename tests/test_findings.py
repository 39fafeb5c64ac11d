"""Findings as data: each claim of the synthetic pages is a record with a verdict, and the page's sentence turns with
it. The pages are rendered from small made-up metrics whose verdicts are opposite, and the opposite sentence is
found."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pandas as pd
import pytest
from ruamel.yaml import YAML

from stages import check, compare_regularizers, report_synthetic
from wdlab import findings
from wdlab.datasets.registry import get as get_dataset
from wdlab.metrics import SYNTHETIC
from wdlab.results import json_record, stats
from wdlab.settings import parse_settings
from wdlab.workspace import ROOT, load_params

SETTINGS = parse_settings(load_params())
TEMPLATES = ROOT / "reports/templates"
SEEDS = list(range(10))


def series(values: list[float]) -> pd.Series:
    return pd.Series(values, index=SEEDS[: len(values)])


def spread(mean: float, width: float) -> pd.Series:
    """Ten seeds' values around `mean`, symmetric, `width` apart at the ends."""
    return series([mean + width * (i - 4.5) / 9 for i in SEEDS])


# ── the records ─────────────────────────────────────────────────────────────────────────────────────


def test_a_paired_difference_is_better_worse_or_indistinguishable():
    before = spread(1.0, 0.4)
    assert findings.paired(before - 0.1, before)["verdict"] == findings.BETTER  # lower loss on every seed
    assert findings.paired(before + 0.1, before)["verdict"] == findings.WORSE
    noisy = before + series([0.05, -0.05] * 5)  # the seeds disagree on the sign
    assert findings.paired(noisy, before)["verdict"] == findings.TIED
    assert findings.paired(before * (1 + 1e-7), before)["verdict"] == findings.SAME  # rounding, not a difference
    gain = findings.paired(before - 0.1, before, better="higher")
    assert gain["verdict"] == findings.WORSE, "an accuracy that falls is worse"


def test_pairing_uses_only_the_seeds_both_share_and_leaves_a_diverged_run_out():
    after, before = series([1.0, 2.0, float("nan"), 4.0]), series([1.5, 2.5, 3.5])
    record = findings.paired(after, before)
    assert record["n"] == 2 and record["mean"] == pytest.approx(-0.5)


def test_the_interval_is_the_t_interval_of_the_paired_differences():
    diff = series([-0.3, -0.1, 0.2, -0.4, 0.0])
    record = findings.paired(diff, series([0.0] * 5))
    expected = stats(diff)
    assert (record["ci_low"], record["ci_high"]) == pytest.approx((expected["ci_low"], expected["ci_high"]))


def test_a_choice_on_the_grid_edge_is_flagged():
    grid = (0, 1, 10, 100)
    assert findings.grid_edge(100, grid)["edge"] == "largest"
    assert findings.grid_edge(0, grid)["edge"] == "smallest"
    assert findings.grid_edge(10, grid)["edge"] == "inside"
    assert findings.grid_edge(None, grid)["edge"] == "none"


def test_the_reference_band_check_looks_at_every_seed():
    values = series([0.07, 0.1, 0.11, 0.182])  # the mean is inside, one seed is not
    record = findings.within_band(values, 0.058, 0.135)
    assert record["mean_inside"] and not record["all_inside"] and record["seeds_inside"] == 3


def test_an_extension_is_advised_only_when_stable_and_its_exact_optimum_is_better():
    chosen = spread(0.0100, 0.002)
    better, worse = chosen - 0.001, chosen + 0.0002
    unstable = findings.extension("largest", (0, 100), {300.0: 300.0}, 0.003, {300.0: better}, chosen)
    assert unstable["verdict"] == "keep" and not unstable["candidates"]["lambda_300"]["stable"], "ηλ = 0.9"
    no_gain = findings.extension("largest", (0, 10), {30.0: 30.0}, 0.003, {30.0: worse}, chosen)
    assert no_gain["verdict"] == "keep" and no_gain["candidates"]["lambda_30"]["gain"]["verdict"] == findings.WORSE
    real = findings.extension("largest", (0, 10), {30.0: 30.0}, 0.003, {30.0: better}, chosen)
    assert real["verdict"] == "extend" and real["advised"] == "30"
    assert findings.beyond("largest", (0, 0.5, 0.9), is_rate=True) == [], "a rate has nothing above its largest"


# ── made-up metrics for the pages ───────────────────────────────────────────────────────────────────


def summary(mean: float, std: float = 0.0) -> dict:
    return json_record(stats(pd.Series([mean - std, mean, mean + std])) | {"mean": mean})


def grid_entry(test: float, reference: float = 0.0095) -> dict:
    values = {"train_loss": 1e-3, "test_loss": test, "w_norm": 0.4, "zeros": 0.0, "cv_loss": test}
    values |= {"reference_test_loss": reference, "reference_zeros": 0.0}
    return {"diverged": 0, "unstable_folds": 0} | {name: summary(v, v / 10) for name, v in values.items()}


def made_up(*, chosen_vs_null: str = "better", extend: bool = False, edge: str = "largest", edges: int = 1) -> dict:
    """A study of l2 on the grid {0, 3} (the choice: 3) whose verdicts are set by the arguments; its records are the
    real functions' on made-up seeds."""
    null = spread(0.0103, 0.003)
    chosen = {"better": null - 0.002, "indistinguishable": null + series([0.001, -0.001] * 5), "worse": null + 0.002}
    at_choice = chosen[chosen_vs_null]
    none, min_norm = spread(90.0, 20.0), null - 0.001
    candidate = at_choice - 0.001 if extend else at_choice + 0.001
    extension = findings.extension(edge, (0.0, 3.0), {9.0: 9.0}, 0.003, {9.0: candidate}, at_choice)
    vs = {
        "vs_none": findings.paired(at_choice, none),
        "vs_null": findings.paired(at_choice, null),
        "vs_exact": findings.paired(at_choice, null - 0.0007),
    }
    sparsity = {
        "sparsity": {k: None for k in ("from_strength", "most_at", "smallest", "sgd_at_smallest", "exact_at_smallest")}
        | {"most": 0.0},
        "best_exact_test_loss": 0.0095,
    }
    regularizers = {
        name: {"edge": {"strength": 3.0, "edge": edge if i < edges else "inside"}} | vs | sparsity
        for i, name in enumerate(("l2", "decoupled"))
    }
    return {
        "seeds": 10,
        "regularizer": "l2",
        "grid": {"lambda_0": grid_entry(90.0), "lambda_3": grid_entry(float(at_choice.mean()))},
        "cv": {"folds": 5, "best_lambda": 3.0, "chosen": {"lambda_0": 0, "lambda_3": 10}},
        "regularizers": {
            name: {"cv_strength": 3.0, "test_loss": summary(float(at_choice.mean()), 0.001)}
            | {"w_norm": summary(0.4), "zeros": summary(0.0), "reference_test_loss": summary(0.0095)}
            | {"by_strength": {"lambda_3": {"unstable_folds": 0}}}
            for name in ("l2", "decoupled")
        },
        "decoupled_vs_l2": {"pairs": 20, "max_rel_test_loss": 1e-7, "max_rel_w_norm": 1e-7},
        "reference": {"noise_floor": 5e-5, "zero_weight_test_loss": summary(0.0103)},
        "findings": {
            "study": {"edge": regularizers["l2"]["edge"]}
            | vs
            | {"extension": extension}
            | {"closes_gap_from": {"within": 1.25, "strength": 3.0}},
            "null": {
                "test_loss": summary(0.0103),
                "min_norm_vs_null": findings.paired(min_norm, null),
                "min_norm_vs_chosen": findings.paired(min_norm, at_choice),
            },
            "regularizers": regularizers,
            "pairwise": {"l2_vs_decoupled": findings.paired(at_choice, at_choice * (1 + 1e-8))},
            "summary": {
                "on_edge": edges,
                "better_than_none": 2,
                "better_than_null": 2 * (chosen_vs_null == "better"),
                "worse_than_null": 2 * (chosen_vs_null == "worse"),
            },
        },
    }


def study_page(metrics: dict) -> str:
    return report_synthetic.render_page(TEMPLATES / "synthetic.md.j2", metrics, SETTINGS, ["figures/x.png"])


def comparison_page(metrics: dict) -> str:
    return compare_regularizers.synthetic_page(
        TEMPLATES / "regularizers_synthetic.md.j2", metrics, SETTINGS, ["figures/y.png"]
    )


# ── the pages turn with the verdicts ────────────────────────────────────────────────────────────────


def test_the_study_page_frames_the_choice_against_the_null_model():
    beats = study_page(made_up(chosen_vs_null="better"))
    assert "l2 at its cross-validated λ is below it" in beats and "a fit beyond the null model" in beats
    assert "cures is SGD's random initialisation" not in beats
    ties = study_page(made_up(chosen_vs_null="indistinguishable"))
    assert "is not distinguishable from it" in ties and "cures is SGD's random initialisation" in ties
    assert "a fit beyond the null model" not in ties
    assert "the minimum-norm interpolant" in ties and "below SGD at the choice" in ties
    assert "and better than SGD at the choice" in ties


def test_the_study_page_advises_an_extension_only_when_the_record_does():
    real = study_page(made_up(extend=True))
    assert "extend the grid and rerun" in real and "synthetic.strengths.l2=[0, 3, 9]" in real
    futile = study_page(made_up(extend=False))
    assert "Extending the grid past it gains nothing" in futile and "dvc exp run -S 'synthetic.strengths" not in futile
    assert "above SGD's at the choice" in futile
    inside = study_page(made_up(edge="inside"))
    assert "grid's edge" not in inside and "Extending the grid" not in inside


def test_the_study_page_says_how_many_seeds_land_in_the_reference_band():
    metrics = made_up()
    values = series([0.07, 0.1, 0.11, 0.182, 0.09, 0.1, 0.08, 0.12, 0.1, 0.13])
    band = findings.within_band(values, 0.058, 0.135)
    metrics["findings"]["reference_band"] = {
        "implementation": "scratch",
        "rows": 1,
        "rows_all_inside": 0,
        "rows_mean_inside": 1,
        "by_strength": {"lambda_3": {"test_loss": band}},
    }
    page = study_page(metrics)
    assert "in 0 of 1 rows every one of our 10 seeds falls inside it" in page
    row = next(line for line in page.splitlines() if "0.058–0.135" in line)
    assert [cell.strip() for cell in row.strip("|").split("|")][-2:] == ["yes", "9 of 10"]


def test_the_comparison_page_flags_the_grid_edges_and_the_null_model():
    on_edge = comparison_page(made_up(edges=2, chosen_vs_null="worse"))
    assert "**Choices on the grids' edges**" in on_edge and "2 of 2 cross-validated strengths" in on_edge
    assert "None predicts better than the training mean" in on_edge and "l2 above it" in on_edge
    inside = comparison_page(made_up(edges=0, chosen_vs_null="better"))
    assert "No cross-validated strength is its grid's end" in inside and "Choices on the grids' edges" not in inside
    assert "2 of 2 predict better than the training mean" in inside and "l2 below it" in inside
    assert "1 of 1 pairs of regularisers cannot be told apart" in inside, "l2 and decoupled: the same update"
    assert "every regulariser cures" not in inside + on_edge


def test_the_cifar_comparison_page_turns_with_the_intervals():
    accuracy = {"mean": 0.6, "std": 0.01, "ci_low": 0.58, "ci_high": 0.62}
    metrics = {
        "seeds": 3,
        "dataset": get_dataset("cifar10").source_record(None),
        "regularizers": {
            r: {"valid_strength": 0.05, "valid_accuracy": accuracy, "gap_accuracy": accuracy}
            | {"test_accuracy": accuracy | {"mean": 0.6 - 0.1 * i, "ci_low": 0.58 - 0.1 * i, "ci_high": 0.62 - 0.1 * i}}
            | {"w_norm": accuracy, "zero_fraction": accuracy}
            for i, r in enumerate(("l2", "decoupled"))
        },
    }
    table = pd.DataFrame(
        {"regularizer": ["l2"], "lambda": [0.0], "gap_accuracy_mean": [0.3], "w_norm_mean": [10.0]}
        | {"zero_fraction_mean": [0.0]}
    )
    template = TEMPLATES / "regularizers_images.md.j2"
    apart = compare_regularizers.cifar_page(template, metrics, table, SETTINGS, "cifar10", [])
    assert "its 95 % t-interval over seeds lies above those of decoupled" in apart and "AdamW" in apart
    close = copy.deepcopy(metrics)
    close["regularizers"]["decoupled"]["test_accuracy"] = accuracy | {"mean": 0.59}
    assert "its interval overlaps the others'" in compare_regularizers.cifar_page(
        template, close, table, SETTINGS, "cifar10", []
    )


# ── one declaration per metric, no import circle ───────────────────────────────────────────────────


def test_checks_yaml_guards_every_metric_with_the_kind_the_registry_declares():
    rules = check.parse_rules(
        YAML(typ="safe").load((ROOT / "checks.yaml").read_text())["studies"]["synthetic"]["tolerances"]
    )
    for metric in SYNTHETIC.values():
        rule, _ = check.rule_for(f"grid.lambda_3.{metric.name}.mean", rules)
        assert rule.kind == metric.rule, metric.name


def test_every_finding_of_the_committed_metrics_has_a_rule():
    import json

    metrics = json.loads((ROOT / "metrics/synthetic.json").read_text())
    assert metrics["findings"], "the evaluate stage writes the findings"
    tolerances = check.calibrate(
        metrics, YAML(typ="safe").load((ROOT / "checks.yaml").read_text())["studies"]["synthetic"]["tolerances"], 3
    )
    assert any(name.startswith("findings.") for name in tolerances)


def library_imports(path: Path) -> set[str]:
    """The wdlab modules `path` imports, `if TYPE_CHECKING:` blocks included: a circle there is one all the same."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    modules = {module_name(p) for p in (ROOT / "wdlab").rglob("*.py")}
    return {name for name in names if name in modules and name != "wdlab"} - {module_name(path)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_among_the_library_modules():
    graph = {module_name(p): library_imports(p) for p in (ROOT / "wdlab").rglob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " → ".join(path[path.index(module) :] + (module,)))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())
