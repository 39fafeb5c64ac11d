"""Check the metrics against a committed baseline and the study's scientific invariants; exit 1 on a regression.

Tolerances live in checks.yaml. Update a baseline on purpose with `python -m stages.check --update`.
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
from wdlab.files import atomic_path, read_json
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


def tolerance_for(metric: str, rules: dict[str, dict]) -> Tolerance | None:
    """The first rule whose glob pattern matches; None means the metric is not checked."""
    for pattern, rule in rules.items():
        if fnmatch.fnmatchcase(metric, pattern):
            return None if rule == "skip" else Tolerance(**rule)
    return None


def compare(baseline: dict, now: dict, rules: dict[str, dict]) -> list[Row]:
    """One row per checked metric of the baseline; a metric that vanished or became NaN fails."""
    base_flat, now_flat = flatten(baseline), flatten(now)
    rows = []
    for metric, base in base_flat.items():
        tol = tolerance_for(metric, rules)
        if tol is None:
            continue
        value = now_flat.get(metric)
        rows.append(Row(metric, base, value, str(tol), _within(base, value, tol)))
    return rows


def _within(base: Any, value: Any, tol: Tolerance) -> bool:
    if value is None or base is None or isinstance(base, bool) or isinstance(value, bool):
        return value == base
    if not (math.isfinite(value) and math.isfinite(base)):
        return False
    return tol.allows(float(base), float(value))


# ---------- scientific invariants: they must hold whatever the tolerances ----------

def synthetic_invariants(m: dict, slack: float) -> Iterator[Row]:
    grid = {float(k.removeprefix("lambda_")): v for k, v in m["grid"].items()}
    lambdas = sorted(grid)
    if 0.0 in grid and 3.0 in grid:
        t0, t3 = grid[0.0]["test_loss"], grid[3.0]["test_loss"]
        yield Row("invariant: test loss λ=3 < λ=0", t0, t3, "strict", t3 < t0)
    norms = [grid[lam]["w_norm"] for lam in lambdas]
    yield Row("invariant: ‖w‖ falls as λ grows", norms[0], norms[-1], "monotone", all(a >= b for a, b in zip(norms, norms[1:])))
    for lam in lambdas:
        row = grid[lam]
        # the exact ridge solution minimises the training objective: SGD can't beat it
        yield Row(f"invariant: objective λ={lam:g} ≥ exact ridge", row["ridge_objective"], row["objective"], "exact",
                  row["objective"] >= row["ridge_objective"] * (1 - 1e-6) - 1e-12)
        yield Row(f"invariant: test loss λ={lam:g} not below exact ridge", row["ridge_test_loss"], row["test_loss"],
                  f"-{slack:.0%}", row["test_loss"] >= row["ridge_test_loss"] * (1 - slack))


def cifar10_invariants(m: dict, slack: float) -> Iterator[Row]:
    grid = {float(k.removeprefix("lambda_")): v for k, v in m["grid"].items()}
    lambdas = sorted(lam for lam in grid if not grid[lam].get("diverged"))
    norms = [grid[lam]["w_norm"] for lam in lambdas]
    yield Row("invariant: weight norm falls as λ grows", norms[0], norms[-1], "monotone", all(a >= b for a, b in zip(norms, norms[1:])))
    for lam in lambdas:
        acc = grid[lam]["test_accuracy"]
        yield Row(f"invariant: test accuracy λ={lam:g} above chance", 0.1, acc, f"+{slack:g}", acc > 0.1 + slack)


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


def run_checks(checks: dict, profile: str, studies: list[str]) -> list[Row]:
    baseline_dir = Path(checks["profiles"][profile]["baselines"])
    rows: list[Row] = []
    for study in studies:
        spec = checks["studies"][study]
        now = read_json(spec["metrics"], made_by=f"evaluate_{study}")
        base = read_json(baseline_dir / Path(spec["metrics"]).name, fix=f"make it with `python -m stages.check --profile {profile} --update`")
        rows += compare(base, now, spec["tolerances"])
        rows += list(INVARIANTS[study](now, float(spec.get("invariant_slack", 0.0))))
    return rows


def update(checks: dict, profile: str, studies: list[str]) -> None:
    baseline_dir = Path(checks["profiles"][profile]["baselines"])
    for study in studies:
        source = Path(checks["studies"][study]["metrics"])
        read_json(source, made_by=f"evaluate_{study}")
        with atomic_path(baseline_dir / source.name) as tmp:
            shutil.copyfile(source, tmp)
        print(f"baseline {baseline_dir / source.name} ← {source}")


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m stages.check", description=__doc__)
    cli.add_argument("--profile", default="default", help="which baseline: a key of `profiles` in checks.yaml")
    cli.add_argument("--study", action="append", help="check only this study (repeatable); default: all in checks.yaml")
    cli.add_argument("--checks", type=Path, default=CHECKS_FILE)
    cli.add_argument("--update", action="store_true", help="copy the current metrics into the baseline, on purpose")
    args = cli.parse_args(argv)
    try:
        checks = load_checks(args.checks)
        if args.profile not in checks["profiles"]:
            raise StageInputError(f"unknown profile '{args.profile}'; {args.checks} defines: {', '.join(checks['profiles'])}")
        studies = args.study or list(checks["profiles"][args.profile]["studies"])
        unknown = sorted(set(studies) - set(checks["studies"]))
        if unknown:
            raise StageInputError(f"unknown study '{unknown[0]}'; {args.checks} defines: {', '.join(checks['studies'])}")
        if args.update:
            update(checks, args.profile, studies)
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
