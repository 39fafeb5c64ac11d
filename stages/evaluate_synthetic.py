"""Evaluate the synthetic study over seeds: for every regulariser and strength, the final losses, ‖w‖ and exact zeros
per seed and their spread, beside the regulariser's exact optimum (ridge, lasso, dropout's per-feature ridge); the
strength cross-validation chooses on each seed, and how many of its folds were unstable at each strength; the study's
regulariser (synthetic.regularizer) in the metrics. Every claim the synthetic pages make is a record of `findings`
(wdlab/findings.py): paired gains over the shared seeds, grid edges, SGD against its exact optimum and each model
against the null predictor, the regularisers pairwise, the reference band seed by seed, and whether extending the grid
can gain anything.
The headline run (`wd`) reports itself (train_synthetic headline), so a new `wd` does not re-run this stage."""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import pandas as pd
import torch

from wdlab import findings, stage
from wdlab.errors import StageInputError
from wdlab.files import grid_folders, load_tensors, read_table, write_csv, write_json
from wdlab.metrics import AT_CHOICE, COMPARED, exact_names
from wdlab.regularizers import BASELINE, REGISTRY
from wdlab.results import by_strength, finite_or_none, json_record, seed_summary, stats, stats_of
from wdlab.settings import REGULARIZERS, Settings
from wdlab.synthetic.data import Split, load_dataset
from wdlab.synthetic.evaluation import METRICS, RUN_KEYS, evaluate_run, loss
from wdlab.synthetic.references import reference_solution
from wdlab.synthetic.selection import choose, chosen_per_seed, fold_counts, mean_cv_loss

log = logging.getLogger("wd-lab.evaluate_synthetic")

# The reference implementation's range over 10 seeds (shared/REFERENCE.md §2), for weight decay in its setup only.
REFERENCE_BANDS = {
    ("scratch", 0.0): {"w_norm": (12.8, 15.0), "train_loss": (4e-7, 1e-4), "test_loss": (70, 112)},
    ("scratch", 3.0): {"w_norm": (0.35, 0.43), "train_loss": (4e-4, 3e-3), "test_loss": (0.058, 0.135)},
    ("concise", 0.0): {"w_norm": (12.8, 15.0), "test_loss": (56, 153)},
    ("concise", 3.0): {"w_norm": (0.37, 0.50), "train_loss": (8e-4, 1e-2), "test_loss": (0.09, 0.74)},
}
REFERENCE_SETUP = {
    "n_train": 20,
    "n_test": 100,
    "n_features": 200,
    "batch_size": 5,
    "lr": 0.003,
    "epochs": 100,
    "init_std": 1.0,
}
CLOSE_TO_EXACT = 1.25  # SGD's mean test loss within 25 % of its exact optimum's: the optimisation has caught up


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.synthetic, settings.synthetic.seeds
    train_set, test_set = load_dataset(args.data, seeds)
    grids = {
        name: evaluate_run(
            load_tensors(folder.model, made_by=f"train_synthetic@{name}", required=RUN_KEYS), train_set, test_set
        )
        for name, folder in grid_folders(args.grids, REGULARIZERS).items()
    }
    cv = read_table(
        args.cv, made_by="cross_validate", required=("regularizer", "seed", "fold", "lambda", "valid_loss", "unstable")
    )
    for regularizer in REGULARIZERS:
        held = cv[cv["regularizer"] == regularizer]
        if set(held["lambda"]) != set(study.strengths.of(regularizer)) or set(held["seed"]) != set(seeds):
            raise StageInputError(
                f"{args.cv} does not match synthetic.strengths.{regularizer} and seeds: run `dvc repro cross_validate`"
            )
    cv_by_seed = mean_cv_loss(cv)
    by_seed = pd.concat(grids.values()).merge(cv_by_seed, on=["regularizer", "seed", "lambda"])
    folds = fold_counts(cv_by_seed)  # unstable folds and all folds per (regulariser, strength), over seeds
    own = by_seed[by_seed["regularizer"] == study.regularizer]
    summary = seed_summary(own, METRICS + ["cv_loss"], untrained=exact_names()).merge(
        folds[folds["regularizer"] == study.regularizer].drop(columns="regularizer"), on="lambda"
    )
    compared = pd.concat(
        [
            seed_summary(by_seed[by_seed["regularizer"] == r], COMPARED, untrained=exact_names()).assign(regularizer=r)
            for r in REGULARIZERS
        ]
    ).merge(folds, on=["regularizer", "lambda"])

    write_csv(args.by_seed, [json_record(row) for row in by_seed.to_dict("records")])
    write_csv(args.table, [json_record(row) for row in summary.to_dict("records")])
    write_csv(args.compare, [json_record(row) for row in compared.to_dict("records")])
    chosen = chosen_per_seed(cv_by_seed[cv_by_seed["regularizer"] == study.regularizer])
    report = metrics(summary, chosen, by_seed, compared, train_set, test_set, settings)
    report["findings"] = claims(report, by_seed, compared, train_set, test_set, settings)
    write_json(args.metrics, report)
    if (best := report["cv"]["best_lambda"]) is not None:
        at = report["grid"][f"lambda_{best:g}"]
        log.info(
            "%s at its cross-validated strength %g over %d seeds: test loss %.3g ± %.2g, ‖w‖ %.3f ± %.2g",
            study.regularizer,
            best,
            len(seeds),
            at["test_loss"]["mean"],
            at["test_loss"]["std"],
            at["w_norm"]["mean"],
            at["w_norm"]["std"],
        )


def metrics(
    summary: pd.DataFrame,
    chosen: pd.Series,
    by_seed: pd.DataFrame,
    compared: pd.DataFrame,
    train_set: Split,
    test_set: Split,
    settings: Settings,
) -> dict:
    """The DVC metrics file: the study's regulariser per strength (each metric's mean, std and 95 % interval over
    seeds), CV's choices and references; then every regulariser at its cross-validated strength, side by side."""
    study = settings.synthetic
    by_cv = choose(summary, "cv_loss_mean")
    zero_weight = null_test_loss(train_set, test_set, list(study.seeds))
    return {
        "seeds": len(study.seeds),
        "regularizer": study.regularizer,
        "grid": {
            f"lambda_{row['lambda']:g}": {
                "diverged": int(row["diverged"]),
                "unstable_folds": int(row["unstable_folds"]),
            }
            | {m: stats_of(row, m) for m in METRICS + ["cv_loss"]}
            for row in summary.to_dict("records")
        },
        "cv": {
            "folds": study.cv_folds,
            "best_lambda": by_cv,  # lowest CV loss averaged over seeds, of the strengths at most half unstable
            "chosen": {
                f"lambda_{strength:g}": int((chosen == strength).sum()) for strength in study.strength_grid
            },  # per seed's own CV
        },
        "regularizers": {r: compared_at_cv(compared[compared["regularizer"] == r]) for r in REGULARIZERS},
        **{
            f"{r.name}_vs_{r.same_update_as}": same_update(by_seed, r.name, r.same_update_as)
            for r in REGISTRY.values()
            if r.same_update_as
        },
        "reference": {
            "noise_floor": study.data.noise_std**2 / 2,  # Bayes limit: E[ε²]/2
            "zero_weight_test_loss": json_record(stats(zero_weight)),  # predict the training mean
        },
    }


def compared_at_cv(rows: pd.DataFrame) -> dict:
    """One regulariser at the strength cross-validation chooses (lowest mean CV loss over its stable folds): what it
    reaches there; and its CV and test loss and unstable folds at every strength, the choice's evidence and what stays
    comparable when the choice moves."""
    best = choose(rows, "cv_loss_mean")
    at = rows[rows["lambda"] == best].iloc[0] if best is not None else None  # None: no strength had a stable majority
    unstable = {f"lambda_{row['lambda']:g}": int(row["unstable_folds"]) for row in rows.to_dict("records")}
    return (
        {"cv_strength": best}
        | {m: stats_of(at, m) if at is not None else None for m in AT_CHOICE}
        | {
            "by_strength": {
                key: scores | {"unstable_folds": unstable[key]}
                for key, scores in by_strength(rows, ("cv_loss", "test_loss")).items()
            }
        }
    )


def same_update(by_seed: pd.DataFrame, name: str, other: str) -> dict:
    """Two regularisers whose momentum-free SGD update is the same one (decoupled decay and the L2 penalty): the
    largest relative difference of their final test losses and weights over every (seed, λ) both trained, which only
    rounding should make."""
    base = by_seed[by_seed["regularizer"] == other].set_index(["seed", "lambda"])
    same = by_seed[by_seed["regularizer"] == name].set_index(["seed", "lambda"])
    both = base.index.intersection(same.index)
    if both.empty:
        return {"pairs": 0, "max_rel_test_loss": None, "max_rel_w_norm": None}
    rel = {
        m: ((same.loc[both, m] - base.loc[both, m]).abs() / base.loc[both, m].abs().clip(lower=1e-12)).max()
        for m in ("test_loss", "w_norm")
    }
    return {"pairs": len(both), "max_rel_test_loss": float(rel["test_loss"]), "max_rel_w_norm": float(rel["w_norm"])}


def null_test_loss(train_set: Split, test_set: Split, seeds: list[int]) -> pd.Series:
    """The null model's test loss per seed: w = 0 and the bias the training targets' mean, ŷ = ȳ_train."""
    weight = torch.zeros(len(seeds), 1, test_set.x.shape[-1])
    return pd.Series(loss(test_set, weight, train_set.y.mean(dim=-1)[:, None]).tolist(), index=seeds)


def claims(
    report: dict, by_seed: pd.DataFrame, compared: pd.DataFrame, train_set: Split, test_set: Split, settings: Settings
) -> dict:
    """Every claim of the synthetic pages as a record: the number, its 95 % t-interval over the shared seeds, and the
    verdict the page's sentence turns on."""
    study = settings.synthetic
    seeds = list(study.seeds)
    null = null_test_loss(train_set, test_set, seeds)

    def per_seed(regularizer: str, strength: float, metric: str = "test_loss") -> pd.Series:
        rows = by_seed[(by_seed["regularizer"] == regularizer) & (by_seed["lambda"] == strength)].set_index("seed")
        values = rows[metric]
        return values if metric in exact_names() else values.mask(rows["diverged"].astype(bool))

    none = per_seed(BASELINE, 0.0)  # no regulariser at all: the baseline's λ = 0
    min_norm = per_seed(BASELINE, 0.0, "reference_test_loss")  # exact ridge at λ = 0: the min-norm interpolant
    regularizers = {}
    for name in REGULARIZERS:
        choice, grid = report["regularizers"][name]["cv_strength"], study.strengths.of(name)
        record: dict = {"edge": findings.grid_edge(choice, grid)}
        if choice is not None:
            at = per_seed(name, choice)
            record |= {
                "vs_none": findings.paired(at, none),
                "vs_null": findings.paired(at, null),
                "vs_exact": findings.paired(at, per_seed(name, choice, "reference_test_loss")),
            }
        regularizers[name] = record | sparsity(compared[compared["regularizer"] == name])
    chosen = report["cv"]["best_lambda"]
    own = regularizers[study.regularizer]
    result = {
        "study": {key: own[key] for key in ("edge", "vs_none", "vs_null", "vs_exact") if key in own}
        | {
            "closes_gap_from": closes_gap(report["grid"]),
            "extension": grid_extension(chosen, train_set, test_set, settings, per_seed),
        },
        "null": {
            "test_loss": json_record(stats(null)),
            "min_norm_vs_null": findings.paired(min_norm, null),
        }
        | (
            {"min_norm_vs_chosen": findings.paired(min_norm, per_seed(study.regularizer, chosen))}
            if chosen is not None
            else {}
        ),
        "regularizers": regularizers,
        "pairwise": pairwise(report, per_seed),
        "summary": {
            "on_edge": sum(1 for r in regularizers.values() if r["edge"]["edge"] in ("largest", "smallest")),
            "better_than_none": verdicts(regularizers, "vs_none", findings.BETTER),
            "better_than_null": verdicts(regularizers, "vs_null", findings.BETTER),
            "worse_than_null": verdicts(regularizers, "vs_null", findings.WORSE),
        },
    }
    if (band := reference_band(by_seed, settings)) is not None:
        result["reference_band"] = band
    return result


def verdicts(records: dict, claim: str, verdict: str) -> int:
    """How many regularisers' `claim` has this verdict."""
    return sum(1 for record in records.values() if record.get(claim, {}).get("verdict") == verdict)


def closes_gap(grid: dict) -> dict:
    """The smallest strength from which on SGD's mean test loss is within CLOSE_TO_EXACT of its exact optimum's."""
    close = None
    for key in sorted(grid, key=lambda k: float(k.removeprefix("lambda_")), reverse=True):
        run = grid[key]
        if (
            run["test_loss"]["mean"] is None
            or run["test_loss"]["mean"] > CLOSE_TO_EXACT * run["reference_test_loss"]["mean"]
        ):
            break
        close = float(key.removeprefix("lambda_"))
    return {"within": CLOSE_TO_EXACT, "strength": close}


def grid_extension(chosen: float | None, train_set: Split, test_set: Split, settings: Settings, per_seed) -> dict:
    """Whether the study's grid is worth extending past the edge its CV choice sits on: each strength beyond it, its
    step's stability and its exact optimum's test loss against SGD's at the choice (wdlab.findings.extension)."""
    study = settings.synthetic
    regularizer, grid = REGISTRY[study.regularizer], study.strengths.of(study.regularizer)
    edge = findings.grid_edge(chosen, grid)["edge"]
    candidates = findings.beyond(edge, grid, regularizer.is_rate)
    exact_at = {}
    for strength in candidates:
        weight, bias = reference_solution(regularizer.name, train_set, strength)  # [S, d], [S]
        exact_at[strength] = pd.Series(loss(test_set, weight[:, None], bias[:, None]).tolist(), index=list(study.seeds))
    chosen_loss = per_seed(regularizer.name, chosen) if chosen is not None else pd.Series(dtype=float)
    return findings.extension(
        edge, grid, {s: regularizer.decay_rate(s) for s in candidates}, study.train.lr, exact_at, chosen_loss
    )


def pairwise(report: dict, per_seed) -> dict:
    """Each pair of regularisers at their CV strengths, test loss paired over the seeds they share: the first against
    the second ("better": the first's is lower)."""
    choices = {r: c["cv_strength"] for r, c in report["regularizers"].items() if c["cv_strength"] is not None}
    return {
        f"{a}_vs_{b}": findings.paired(per_seed(a, choices[a]), per_seed(b, choices[b]))
        for a, b in itertools.combinations(choices, 2)
    }


def sparsity(rows: pd.DataFrame) -> dict:
    """A regulariser's exact zeros over its grid (means over seeds) and its exact optimum's lowest test loss at a
    strength > 0: where SGD first makes a zero, where most, and against the exact optimum at its smallest strength."""
    positive = rows[rows["lambda"] > 0]
    sparse = rows[rows["zeros_mean"] > 0]
    smallest = positive.iloc[0] if not positive.empty else None
    most = sparse.loc[sparse["zeros_mean"].idxmax()] if not sparse.empty else None
    return {
        "sparsity": json_record(
            {
                "from_strength": sparse["lambda"].min() if not sparse.empty else None,
                "most": most["zeros_mean"] if most is not None else 0.0,
                "most_at": most["lambda"] if most is not None else None,
                "smallest": smallest["lambda"] if smallest is not None else None,
                "sgd_at_smallest": smallest["zeros_mean"] if smallest is not None else None,
                "exact_at_smallest": smallest["reference_zeros_mean"] if smallest is not None else None,
            }
        ),
        "best_exact_test_loss": finite_or_none(positive["reference_test_loss_mean"].min())
        if not positive.empty
        else None,
    }


def reference_band(by_seed: pd.DataFrame, settings: Settings) -> dict | None:
    """Every seed of weight decay beside the reference implementation's band over 10 seeds, where the setup is the
    reference one (shared/REFERENCE.md §2): each (strength, metric) with its mean, range and seeds inside."""
    spec = settings.synthetic
    setup = spec.data.model_dump() | spec.train.model_dump()
    if spec.regularizer != BASELINE or any(setup[key] != value for key, value in REFERENCE_SETUP.items()):
        return None
    own = by_seed[by_seed["regularizer"] == BASELINE]
    rows = {
        f"lambda_{strength:g}": {
            metric: findings.within_band(own.loc[own["lambda"] == strength, metric], low, high)
            for metric, (low, high) in bands.items()
        }
        for (implementation, strength), bands in REFERENCE_BANDS.items()
        if implementation == spec.train.implementation and (own["lambda"] == strength).any()
    }
    if not rows:
        return None
    checked = [row for metrics in rows.values() for row in metrics.values()]
    return {
        "implementation": spec.train.implementation,
        "rows": len(checked),
        "rows_all_inside": sum(row["all_inside"] for row in checked),
        "rows_mean_inside": sum(row["mean_inside"] for row in checked),
        "by_strength": rows,
    }


def parser() -> argparse.ArgumentParser:
    cli = stage.parser_with_paths(
        __doc__,
        "python -m stages.evaluate_synthetic",
        {
            "data": "the dataset the generate stage wrote",
            "cv": "cross-validation losses per (regulariser, seed, fold, strength)",
            "metrics": "the DVC metrics file (output)",
            "by-seed": "final metrics per (regulariser, seed, strength), long format (output)",
            "table": (
                "the study's regulariser per strength: mean, std and 95 % interval over seeds, for dvc plots (output)"
            ),
            "compare": "every regulariser per strength: mean, std and 95 % interval over seeds (output)",
        },
    )
    cli.add_argument("--grids", type=Path, required=True, help="the grids' folder: one trained grid per regulariser")
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
