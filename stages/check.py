"""Check the metrics against a committed baseline and the study's scientific invariants; exit 1 on a regression.

Every metric is a mean (or spread) over seeds. Its tolerance is calibrated on the spread the baseline measured:
a mean may move k·σ·√(2/S) (k standard errors of the difference of two S-seed means, k in checks.yaml), never
less than the absolute floor checks.yaml gives its pattern. `--update` records a new baseline and its
tolerances (baselines/<profile>/<study>.tolerances.json); `--calibrate` re-derives the tolerances alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from wdlab.errors import StageInputError
from wdlab.files import atomic_path, read_json, write_json
from wdlab.results import flatten

CHECKS_FILE = Path("checks.yaml")


@dataclass(frozen=True)
class Tolerance:
    rel: float = 0.0
    abs: float = 0.0

    def allows(self, baseline: float, now: float) -> bool:
        return abs(now - baseline) <= self.abs + self.rel * abs(baseline)

    def __str__(self) -> str:
        parts = [f"±{self.rel:.0%}" if self.rel else "", f"±{self.abs:g}" if self.abs else ""]
        return " ".join(p for p in parts if p) or "exact"


@dataclass(frozen=True)
class Row:
    metric: str
    baseline: Any
    now: Any
    tolerance: str
    ok: bool


def rule_for(metric: str, rules: dict[str, Any]) -> tuple[Tolerance, bool] | None:
    """The first rule whose glob pattern matches, and whether the seed spread may widen it; None: not checked."""
    for pattern, rule in rules.items():
        if fnmatch.fnmatchcase(metric, pattern):
            if rule == "skip":
                return None
            rule = dict(rule)
            calibrated = rule.pop("calibrated", True)
            return Tolerance(**rule), calibrated
    return None


def calibrate(baseline: dict, rules: dict[str, Any], k: float) -> dict[str, dict]:
    """Each checked metric's tolerance: the rule's, widened for a mean to k·σ·√(2/S) from the baseline's own spread."""
    flat, seeds = flatten(baseline), baseline.get("seeds", 1)
    tolerances = {}
    for metric, value in flat.items():
        found = rule_for(metric, rules)
        if found is None:
            continue
        rule, calibrated = found
        entry = {"rel": rule.rel, "abs": rule.abs, "why": "checks.yaml"}
        std = flat.get(metric.removesuffix(".mean") + ".std") if calibrated and metric.endswith(".mean") else None
        if std is not None and seeds > 1 and math.isfinite(std):
            spread = k * std * math.sqrt(2 / seeds)
            if spread > rule.abs + rule.rel * abs(value or 0):
                entry = {"rel": 0.0, "abs": spread, "why": f"{k:g}·σ·√(2/{seeds}), σ = {std:.3g}"}
        tolerances[metric] = entry
    return tolerances


def compare(baseline: dict, now: dict, tolerances: dict[str, dict]) -> list[Row]:
    """One row per checked metric of the baseline; a metric that vanished or became NaN fails."""
    base_flat, now_flat = flatten(baseline), flatten(now)
    rows = []
    for metric, entry in tolerances.items():
        tol = Tolerance(entry["rel"], entry["abs"])
        base, value = base_flat.get(metric), now_flat.get(metric)
        rows.append(Row(metric, base, value, str(tol), _within(base, value, tol)))
    return rows


def _within(base: Any, value: Any, tol: Tolerance) -> bool:
    if value is None or base is None or any(isinstance(v, (bool, str)) for v in (base, value)):
        return value == base  # flags and names (the study's regulariser) must match exactly
    if not (math.isfinite(value) and math.isfinite(base)):
        return False
    return tol.allows(float(base), float(value))


# ---------- scientific invariants: they must hold whatever the tolerances ----------

def _grid_means(m: dict, metric: str) -> dict[float, float | None]:
    return {float(k.removeprefix("lambda_")): v[metric]["mean"] for k, v in m["grid"].items()}


def synthetic_invariants(m: dict, slack: float) -> Iterator[Row]:
    """On the seed means: decay helps, shrinks ‖w‖, and never beats the exact optimum of its own objective."""
    test, norms = _grid_means(m, "test_loss"), _grid_means(m, "w_norm")
    objective, reference_objective, ridge_test = (_grid_means(m, key) for key in ("objective", "reference_objective", "reference_test_loss"))
    lambdas = sorted(lam for lam in test if test[lam] is not None)  # every seed of a λ diverged: nothing to compare
    if 0.0 in test and 3.0 in test:
        yield Row("invariant: mean test loss λ=3 < λ=0", test[0.0], test[3.0], "strict", test[3.0] < test[0.0])
    falling = [norms[lam] for lam in lambdas]
    yield Row("invariant: mean ‖w‖ falls as λ grows", falling[0], falling[-1], "strictly", all(a > b for a, b in zip(falling, falling[1:])))
    for lam in lambdas:
        # the exact optimum solution minimises the training objective on every seed: SGD can't beat it
        yield Row(f"invariant: objective λ={lam:g} ≥ exact optimum", reference_objective[lam], objective[lam], "exact",
                  objective[lam] >= reference_objective[lam] * (1 - 1e-6) - 1e-12)
        yield Row(f"invariant: test loss λ={lam:g} not below exact optimum", ridge_test[lam], test[lam],
                  f"-{slack:.0%}", test[lam] >= ridge_test[lam] * (1 - slack))


def cifar10_invariants(m: dict, slack: float) -> Iterator[Row]:
    """On the seed means: decay shrinks the weights at every step of λ, every λ learns, λ = 0 overfits."""
    diverged = {float(k.removeprefix("lambda_")) for k, v in m["grid"].items() if v["diverged"]}
    norms, test, gap = (_grid_means(m, key) for key in ("w_norm", "test_accuracy", "gap_accuracy"))
    lambdas = sorted(lam for lam in norms if lam not in diverged)
    falling = [norms[lam] for lam in lambdas]
    yield Row("invariant: mean weight norm falls as λ grows", falling[0], falling[-1], "strictly", all(a > b for a, b in zip(falling, falling[1:])))
    for lam in lambdas:
        yield Row(f"invariant: mean test accuracy λ={lam:g} above chance", 0.1, test[lam], f"+{slack:g}", test[lam] > 0.1 + slack)
    if 0.0 in lambdas:
        yield Row("invariant: λ = 0 overfits (train − test accuracy)", 0.0, gap[0.0], "> 0", gap[0.0] > 0)


INVARIANTS: dict[str, Callable[[dict, float], Iterator[Row]]] = {
    "synthetic": synthetic_invariants,
    "cifar10": cifar10_invariants,
}


# ---------- command line ----------

def load_checks(path: Path) -> dict:
    if not path.is_file():
        raise StageInputError(f"{path} is missing: it declares the baselines and tolerances of the regression check")
    return YAML(typ="safe", pure=True).load(path.read_text())


def render(rows: list[Row]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [("metric", "baseline", "now", "tolerance", "verdict")]
    table += [(r.metric, cell(r.baseline), cell(r.now), r.tolerance, "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _paths(checks: dict, profile: str, study: str) -> tuple[Path, Path, Path]:
    """The study's metrics, its baseline and the baseline's recorded tolerances."""
    metrics = Path(checks["studies"][study]["metrics"])
    baseline = Path(checks["profiles"][profile]["baselines"]) / metrics.name
    return metrics, baseline, baseline.with_suffix(".tolerances.json")


def _made_by(spec: dict, study: str) -> str:
    """The stage that writes a study's metrics, for the message when they are missing: evaluate_<study> unless
    checks.yaml names another (`made_by`)."""
    return spec.get("made_by", f"evaluate_{study}")


def run_checks(checks: dict, profile: str, studies: list[str]) -> list[Row]:
    rows: list[Row] = []
    for study in studies:
        spec = checks["studies"][study]
        metrics, baseline, tolerances = _paths(checks, profile, study)
        fix = f"make it with `python -m stages.check --profile {profile} --update`"
        now = read_json(metrics, made_by=_made_by(spec, study))
        rows += compare(read_json(baseline, fix=fix), now, read_json(tolerances, fix=fix))
        if study in INVARIANTS:
            rows += list(INVARIANTS[study](now, float(spec.get("invariant_slack", 0.0))))
    return rows


def update(checks: dict, profile: str, studies: list[str], metrics_too: bool) -> None:
    """Record the current metrics as the baseline (if `metrics_too`) and derive its tolerances from its spread."""
    for study in studies:
        spec = checks["studies"][study]
        metrics, baseline, tolerances = _paths(checks, profile, study)
        if metrics_too:
            read_json(metrics, made_by=_made_by(spec, study))
            with atomic_path(baseline) as tmp:
                shutil.copyfile(metrics, tmp)
            print(f"baseline {baseline} ← {metrics}")
        base = read_json(baseline, fix=f"make it with `python -m stages.check --profile {profile} --update`")
        write_json(tolerances, calibrate(base, spec["tolerances"], float(checks["seed_spread_k"])))
        print(f"tolerances {tolerances} ← the spread over {base.get('seeds', 1)} seeds of {baseline}")


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m stages.check", description=__doc__)
    cli.add_argument("--profile", default="default", help="which baseline: a key of `profiles` in checks.yaml")
    cli.add_argument("--study", action="append", help="check only this study (repeatable); default: all in checks.yaml")
    cli.add_argument("--checks", type=Path, default=CHECKS_FILE)
    cli.add_argument("--update", action="store_true", help="copy the current metrics into the baseline and calibrate its tolerances, on purpose")
    cli.add_argument("--calibrate", action="store_true", help="re-derive the baseline's tolerances from checks.yaml and its spread")
    args = cli.parse_args(argv)
    try:
        checks = load_checks(args.checks)
        if args.profile not in checks["profiles"]:
            raise StageInputError(f"unknown profile '{args.profile}'; {args.checks} defines: {', '.join(checks['profiles'])}")
        studies = args.study or list(checks["profiles"][args.profile]["studies"])
        unknown = sorted(set(studies) - set(checks["studies"]))
        if unknown:
            raise StageInputError(f"unknown study '{unknown[0]}'; {args.checks} defines: {', '.join(checks['studies'])}")
        if args.update or args.calibrate:
            update(checks, args.profile, studies, metrics_too=args.update)
            return 0
        rows = run_checks(checks, args.profile, studies)
    except StageInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(render(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\nregression check: {len(rows) - len(failed)} ok, {len(failed)} regressed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
