"""Check the metrics against a committed baseline and the study's scientific invariants; exit 1 on a regression.

Each rule in checks.yaml says what kind of number it guards: a seed mean (its band calibrated on the spread the
baseline measured: k·σ·√(2/S), k standard errors of the difference of two S-seed means), a spread, an exact value,
a bound (a rounding-level difference below a ceiling), a count, a choice (an argmax over noisy scores, which may move
within a tie), or skip. A value read at a chosen strength is checked only while the choice holds. `--update` records a
new baseline and its tolerances (baselines/<profile>/<study>.tolerances.json, each with its kind and derivation);
`--calibrate` re-derives the tolerances alone; both refuse a metric that no rule matches.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from ruamel.yaml import YAML

from wdlab.errors import StageInputError
from wdlab.files import atomic_path, read_json, write_json
from wdlab.results import flatten

CHECKS_FILE = Path("checks.yaml")


# ---------- the rules of checks.yaml, one model per kind ----------


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Band(_Rule):
    """A number compared with the baseline's: |now − baseline| ≤ abs + rel·|baseline|; a mean's band may widen to
    its seed spread, a spread's and an exact value's never do. `at`: the choice metric it is read at."""

    kind: Literal["mean", "spread", "exact"]
    rel: float = Field(0.0, ge=0)
    abs: float = Field(0.0, ge=0)
    at: str | None = None


class Count(_Rule):
    """An integer that may move by `slack`."""

    kind: Literal["count"]
    slack: int = Field(0, ge=0)


class Bound(_Rule):
    """Noise by construction (rounding): it must stay at or below `max`, whatever the baseline's value."""

    kind: Literal["bound"]
    max: float = Field(gt=0)


class Choice(_Rule):
    """A strength chosen by the best mean score; `scores` names the {mean, std} node of the score at `{strength}`."""

    kind: Literal["choice"]
    scores: str

    @field_validator("scores")
    @classmethod
    def _names_the_strength(cls, scores: str) -> str:
        if "{strength}" not in scores:
            raise ValueError("must name the score's node with {strength} where the strength goes")
        return scores


class Skip(_Rule):
    kind: Literal["skip"]
    why: str = Field(min_length=1)


Rule = Annotated[Band | Count | Bound | Choice | Skip, Field(discriminator="kind")]
RULES = TypeAdapter(dict[str, Rule])


def parse_rules(rules: Mapping[str, Any], source: str = "checks.yaml") -> dict[str, Rule]:
    """A study's rules, validated: every rule a mapping with its `kind` and that kind's keys only."""
    try:
        return RULES.validate_python(dict(rules))
    except ValidationError as err:
        first = err.errors()[0]
        pattern, *where = first["loc"]
        keys = ".".join(map(str, where[1:])) if len(where) > 1 else "kind"
        raise StageInputError(f"{source}: rule '{pattern}': {keys}: {first['msg']}") from None


def rule_for(metric: str, rules: Mapping[str, Rule]) -> tuple[Rule, tuple[str, ...]] | None:
    """The first rule whose pattern matches, with what each of its `*` matched (dots included); None: no rule."""
    for pattern, rule in rules.items():
        found = re.fullmatch("(.*?)".join(map(re.escape, pattern.split("*"))), metric)
        if found:
            return rule, found.groups()
    return None


# ---------- tolerances: derived from the rules and the baseline ----------


@dataclass(frozen=True)
class Tolerance:
    rel: float = 0.0
    abs: float = 0.0

    def allows(self, baseline: float, now: float) -> bool:
        return abs(now - baseline) <= self.abs + self.rel * abs(baseline)

    def __str__(self) -> str:
        parts = [f"±{self.rel * 100:g}%" if self.rel else "", f"±{self.abs:g}" if self.abs else ""]
        return " ".join(p for p in parts if p) or "exact"


def calibrate(baseline: dict, rules: Mapping[str, Any], k: float) -> dict[str, dict]:
    """Every metric's kind and tolerance with its derivation; a metric that no rule matches is refused, so a new
    metric cannot go unguarded silently."""
    parsed, flat, seeds = parse_rules(rules), flatten(baseline), baseline.get("seeds", 1)
    tolerances, unmatched = {}, []
    for metric, value in flat.items():
        found = rule_for(metric, parsed)
        if found is None:
            unmatched.append(metric)
        else:
            tolerances[metric] = derive(*found, metric, value, flat, seeds, k)
    if unmatched:
        named = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise StageInputError(
            f"no rule in checks.yaml matches {named}: give each pattern a kind (or `kind: skip` with a reason)"
        )
    return tolerances


BAND_WHY = {
    "mean": "checks.yaml: the floor",
    "spread": "checks.yaml: a spread estimate",
    "exact": "checks.yaml: a closed form or a name",
}


def derive(rule: Rule, parts: tuple[str, ...], metric: str, value: Any, flat: dict, seeds: int, k: float) -> dict:
    """One metric's tolerance entry; `parts` fill the `{0}`, `{1}` … of the rule's `at` and `scores`."""
    match rule:
        case Skip():
            return {"kind": "skip", "why": rule.why}
        case Count():
            return {"kind": "count", "slack": rule.slack, "why": "checks.yaml: an integer"}
        case Bound():
            return {
                "kind": "bound",
                "max": rule.max,
                "why": "checks.yaml: a ceiling on rounding; the baseline's value is not compared",
            }
        case Choice():
            scores = rule.scores.format(*parts, strength="{strength}")
            why = (
                f"the same strength, or the baseline's scoring within {k:g}·√(σ₁² + σ₂²)/√S of the current choice "
                "in the current metrics"
            )
            if value is not None and _score(flat, scores, value) is None:
                why += "; the baseline lacks these scores (recorded before they existed): `--update` records them"
            return {"kind": "choice", "scores": scores, "k": k, "why": why}
    entry = {"kind": rule.kind, "rel": rule.rel, "abs": rule.abs, "why": BAND_WHY[rule.kind]}
    if rule.at is not None:
        entry["at"] = rule.at.format(*parts)
    std = flat.get(metric.removesuffix(".mean") + ".std") if rule.kind == "mean" and metric.endswith(".mean") else None
    if std is not None and seeds > 1 and math.isfinite(std):
        spread = k * std * math.sqrt(2 / seeds)
        if spread > rule.abs + rule.rel * abs(value or 0):
            entry |= {"rel": 0.0, "abs": spread, "why": f"{k:g}·σ·√(2/{seeds}), σ = {std:.3g}"}
    return entry


# ---------- the comparison ----------


@dataclass(frozen=True)
class Row:
    metric: str
    baseline: Any
    now: Any
    tolerance: str
    ok: bool
    kind: str = "invariant"  # a metric's rule kind; the scientific invariants are rows of their own kind
    note: str = ""  # why an ok row passed other than by its tolerance (a choice moved within its tie)

    @property
    def verdict(self) -> str:
        return "FAIL" if not self.ok else self.note or "ok"


MOVED = "choice moved: checked at fixed strengths"


def compare(baseline: dict, now: dict, tolerances: dict[str, dict]) -> list[Row]:
    """One row per checked metric of the baseline; a metric that vanished or became NaN fails."""
    base_flat, now_flat = flatten(baseline), flatten(now)
    rows = []
    for metric, entry in tolerances.items():
        kind = entry["kind"]
        if kind == "skip":
            continue
        base, value = base_flat.get(metric), now_flat.get(metric)
        if kind == "choice":
            ok, tolerance, note = choice_holds(entry, base, value, now_flat)
        elif kind == "count":
            slack = entry["slack"]
            ok, tolerance, note = (
                _within(base, value, lambda b, v, slack=slack: abs(v - b) <= slack),
                f"±{slack}" if slack else "exact",
                "",
            )
        elif kind == "bound":
            ceiling = entry["max"]
            ok, tolerance, note = (
                _within(base, value, lambda b, v, ceiling=ceiling: abs(v) <= ceiling),
                f"≤ {ceiling:g}",
                "",
            )
        else:
            band = Tolerance(entry["rel"], entry["abs"])
            moved = "at" in entry and base_flat.get(entry["at"]) != now_flat.get(entry["at"])
            ok, tolerance, note = (
                (True, str(band), MOVED) if moved else (_within(base, value, band.allows), str(band), "")
            )
            kind += ", at choice" if "at" in entry else ""
        rows.append(Row(metric, base, value, tolerance, ok, kind, note))
    return rows


def choice_holds(entry: dict, base: Any, now: Any, now_flat: dict) -> tuple[bool, str, str]:
    """A choice passes when it is the baseline's, or when the baseline's strength is tied with the current choice in
    the current metrics: their mean scores differ by at most k standard errors of the difference of two S-seed means,
    k·√(σ₁² + σ₂²)/√S (a mean's band, k·σ·√(2/S), is the same with σ₁ = σ₂). Seeds share their data across strengths,
    so the paired difference is tighter: this errs on the side of a tie, which is what another CPU may break."""
    if base == now:
        return True, "same, or tied", ""
    if base is None or now is None:
        return False, "a strength on both sides", ""
    scored = [_score(now_flat, entry["scores"], strength) for strength in (base, now)]
    if None in scored:
        return False, f"no score {entry['scores'].format(strength='…')} to tell a tie", ""
    (base_mean, base_std), (now_mean, now_std) = scored
    allowed = entry["k"] * math.hypot(base_std, now_std) / math.sqrt(now_flat.get("seeds", 1))
    gap = abs(now_mean - base_mean)
    return gap <= allowed, f"|Δ| {gap:.3g} {'≤' if gap <= allowed else '>'} {allowed:.3g}", "moved within its tie"


def _score(flat: dict, scores: str, strength: float) -> tuple[float, float] | None:
    """The mean and std of the score at `strength` (std 0 with one seed: no tie but equality); None if not there."""
    node = scores.format(strength=f"{strength:g}")
    mean, std = flat.get(f"{node}.mean"), flat.get(f"{node}.std")
    if mean is None or not math.isfinite(mean):
        return None
    return mean, std if std is not None and math.isfinite(std) else 0.0


def _within(base: Any, value: Any, allows: Callable[[float, float], bool]) -> bool:
    if value is None or base is None or any(isinstance(v, (bool, str)) for v in (base, value)):
        return value == base  # flags and names (the study's regulariser) must match exactly
    if not (math.isfinite(value) and math.isfinite(base)):
        return False
    return allows(float(base), float(value))


# ---------- scientific invariants: they must hold whatever the tolerances ----------


def _grid_means(m: dict, metric: str) -> dict[float, float | None]:
    return {float(k.removeprefix("lambda_")): v[metric]["mean"] for k, v in m["grid"].items()}


def _falls(name: str, values: list[float]) -> Row:
    """A sequence that must fall strictly (the weight norm as λ grows): first and last value, and whether it does."""
    return Row(name, values[0], values[-1], "strictly", all(a > b for a, b in zip(values, values[1:])))


def synthetic_invariants(m: dict, slack: float) -> Iterator[Row]:
    """On the seed means: decay helps, shrinks ‖w‖, and never beats the exact optimum of its own objective."""
    test, norms = _grid_means(m, "test_loss"), _grid_means(m, "w_norm")
    objective, reference_objective, ridge_test = (
        _grid_means(m, key) for key in ("objective", "reference_objective", "reference_test_loss")
    )
    strengths = sorted(
        strength for strength in test if test[strength] is not None
    )  # every seed of a λ diverged: nothing to compare
    if 0.0 in test and 3.0 in test:
        yield Row("invariant: mean test loss λ=3 < λ=0", test[0.0], test[3.0], "strict", test[3.0] < test[0.0])
    yield _falls("invariant: mean ‖w‖ falls as λ grows", [norms[strength] for strength in strengths])
    for strength in strengths:
        # the exact optimum solution minimises the training objective on every seed: SGD can't beat it
        yield Row(
            f"invariant: objective λ={strength:g} ≥ exact optimum",
            reference_objective[strength],
            objective[strength],
            "exact",
            objective[strength] >= reference_objective[strength] * (1 - 1e-6) - 1e-12,
        )
        yield Row(
            f"invariant: test loss λ={strength:g} not below exact optimum",
            ridge_test[strength],
            test[strength],
            f"-{slack:.0%}",
            test[strength] >= ridge_test[strength] * (1 - slack),
        )


def image_invariants(m: dict, slack: float) -> Iterator[Row]:
    """On the seed means: decay shrinks the weights, every λ learns (beats guessing, the dataset's chance), λ = 0
    overfits. In the plain CNN the weights' norm is what λ penalises, so it falls at every step of λ; in the BatchNorm
    ResNet, where the convs are scale-invariant, it settles where decay and the growing updates balance, which need
    not fall further past the grid's middle (Fashion-MNIST's λ = 0.1 ends above 5e-2's): there every λ > 0 must end
    below λ = 0's norm."""
    chance = float(m.get("dataset", {}).get("chance", 0.1))  # a baseline recorded before it was: CIFAR-10's
    diverged = {float(k.removeprefix("lambda_")) for k, v in m["grid"].items() if v["diverged"]}
    norms, test, gap = (_grid_means(m, key) for key in ("w_norm", "test_accuracy", "gap_accuracy"))
    strengths = sorted(strength for strength in norms if strength not in diverged)
    if m.get("architecture") == "plain":
        yield _falls("invariant: mean weight norm falls as λ grows", [norms[strength] for strength in strengths])
    elif 0.0 in strengths:
        yield Row(
            "invariant: mean weight norm below λ = 0's at every λ > 0",
            norms[0.0],
            max(norms[strength] for strength in strengths if strength > 0) if len(strengths) > 1 else norms[0.0],
            "< λ = 0",
            all(norms[strength] < norms[0.0] for strength in strengths if strength > 0),
        )
    for strength in strengths:
        yield Row(
            f"invariant: mean test accuracy λ={strength:g} above chance",
            chance,
            test[strength],
            f"+{slack:g}",
            test[strength] > chance + slack,
        )
    if 0.0 in strengths:
        yield Row("invariant: λ = 0 overfits (train − test accuracy)", 0.0, gap[0.0], "> 0", gap[0.0] > 0)


INVARIANTS: dict[str, Callable[[dict, float], Iterator[Row]]] = {
    "synthetic": synthetic_invariants,
    "cifar10": image_invariants,
    "cifar10_plain": image_invariants,  # the plain CNN's grid, in the same layout
    "fashion_mnist": image_invariants,
    "fashion_mnist_plain": image_invariants,
}


# ---------- command line ----------


def load_checks(path: Path) -> dict:
    """checks.yaml, its rules validated: a rule without a kind, or with a key its kind lacks, stops here."""
    if not path.is_file():
        raise StageInputError(f"{path} is missing: it declares the baselines and tolerances of the regression check")
    checks = YAML(typ="safe", pure=True).load(path.read_text())
    for study, spec in checks["studies"].items():
        spec["tolerances"] = in_order(spec["tolerances"])
        parse_rules(spec["tolerances"], f"{path}, study {study}")
    return checks


def in_order(rules: dict | list[dict]) -> dict:
    """A study's rules: one mapping, or a list of mappings read in order (its own rules, then another study's anchor:
    a YAML merge key would put the anchor's first). The first pattern that matches wins, so where two mappings name
    the same pattern, the earlier one's rule stands."""
    if isinstance(rules, dict):
        return rules
    ordered: dict = {}
    for part in rules:
        for pattern, rule in part.items():
            ordered.setdefault(pattern, rule)
    return ordered


def render(rows: list[Row]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [("metric", "kind", "baseline", "now", "tolerance", "verdict")]
    table += [(r.metric, r.kind, cell(r.baseline), cell(r.now), r.tolerance, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
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
    """Record the current metrics as the baseline (if `metrics_too`) and derive its tolerances from its spread; a
    metric no rule matches stops it before anything of that study is written."""
    for study in studies:
        spec = checks["studies"][study]
        metrics, baseline, tolerances = _paths(checks, profile, study)
        if metrics_too:
            source, base = metrics, read_json(metrics, made_by=_made_by(spec, study))
        else:
            source, base = (
                baseline,
                read_json(baseline, fix=f"make it with `python -m stages.check --profile {profile} --update`"),
            )
        try:
            derived = calibrate(base, spec["tolerances"], float(checks["seed_spread_k"]))
        except StageInputError as err:
            raise StageInputError(f"{source}: {err}") from None
        if metrics_too:
            with atomic_path(baseline) as tmp:
                shutil.copyfile(metrics, tmp)
            print(f"baseline {baseline} ← {metrics}")
        write_json(tolerances, derived)
        print(f"tolerances {tolerances} ← the spread over {base.get('seeds', 1)} seeds of {baseline}")


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m stages.check", description=__doc__)
    cli.add_argument("--profile", default="default", help="which baseline: a key of `profiles` in checks.yaml")
    cli.add_argument("--study", action="append", help="check only this study (repeatable); default: all in checks.yaml")
    cli.add_argument("--checks", type=Path, default=CHECKS_FILE)
    cli.add_argument(
        "--update",
        action="store_true",
        help="copy the current metrics into the baseline and calibrate its tolerances, on purpose",
    )
    cli.add_argument(
        "--calibrate", action="store_true", help="re-derive the baseline's tolerances from checks.yaml and its spread"
    )
    args = cli.parse_args(argv)
    try:
        checks = load_checks(args.checks)
        if args.profile not in checks["profiles"]:
            raise StageInputError(
                f"unknown profile '{args.profile}'; {args.checks} defines: {', '.join(checks['profiles'])}"
            )
        studies = args.study or list(checks["profiles"][args.profile]["studies"])
        unknown = sorted(set(studies) - set(checks["studies"]))
        if unknown:
            raise StageInputError(
                f"unknown study '{unknown[0]}'; {args.checks} defines: {', '.join(checks['studies'])}"
            )
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
    if moved := [r.metric for r in rows if r.kind == "choice" and r.ok and r.note]:
        print(f"moved within a tie: {', '.join(moved)} (what is read at them is checked at fixed strengths)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
