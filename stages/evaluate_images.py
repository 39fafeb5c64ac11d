"""Evaluate an image study (--study) over seeds: for every regulariser and strength, final accuracy, loss,
generalisation gap, ‖θ‖ and exact zeros with their spread; the strength validation picks; the study's regulariser
(<study>.regularizer) in detail; the dataset it ran on (whether its files are the official ones); and every claim
the study's page makes, as records under `findings` (wdlab/cifar10/findings.py), the rotational equilibrium of each
decayed grid among them."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import wdlab
from wdlab import stage
from wdlab.cifar10 import findings
from wdlab.cifar10.summary import FINAL_KEYS, validation_choice
from wdlab.datasets.registry import get as get_dataset
from wdlab.errors import StageInputError
from wdlab.files import (
    RunFolder,
    atomic_dir,
    grid_folders,
    load_tensors,
    read_json,
    read_table,
    save_tensors,
    write_csv,
    write_json,
)
from wdlab.regularizers import BASELINE, sharing_baseline_zero
from wdlab.results import best_lambda, by_strength, json_record, last_epochs, mean_curve, seed_summary, stats_of
from wdlab.settings import REGULARIZERS, Settings
from wdlab.tracking import Tracker

log = logging.getLogger("wd-lab.evaluate_images")

GRID_KEYS = ("regularizer", "lambdas", "seeds", "width", "state_dicts")  # what the chosen nets are taken from
COMPARED = ("train_accuracy", "valid_accuracy", "test_accuracy", "gap_accuracy", "w_norm", "zero_fraction")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study = settings.study(args.study)
    folders = grid_folders(args.grids, REGULARIZERS)
    headline_history, headline_stage = (
        RunFolder(args.headline).history,
        stage.image_stage("headline_images", args.study),
    )
    headline = final_rows(headline_history, headline_stage)
    every = pd.concat(
        [
            final_rows(folder.history, stage.image_stage("train_images", args.study, name))
            for name, folder in folders.items()
        ]
    )
    for regularizer in REGULARIZERS:
        rows = every[every["regularizer"] == regularizer]
        if set(rows["lambda"]) != set(study.strengths.of(regularizer)) or set(rows["seed"]) != set(study.seeds):
            raise StageInputError(
                f"the grid histories do not match {args.study}.strengths.{regularizer} and seeds: "
                f"run `dvc repro {stage.image_stage('train_images', args.study, regularizer)}`"
            )
    grid = every[every["regularizer"] == study.regularizer]
    summary = seed_summary(grid, FINAL_KEYS)
    summary["epochs_run"] = grid.groupby("lambda")["epochs_run"].min().to_numpy()
    compared = with_shared_baseline(every)
    table = pd.concat(
        [seed_summary(compared[compared["regularizer"] == r], COMPARED).assign(regularizer=r) for r in REGULARIZERS]
    )

    write_csv(
        args.by_seed,
        [
            json_record(row)
            for row in compared[["regularizer", "seed", "lambda", *FINAL_KEYS, "epochs_run", "diverged"]].to_dict(
                "records"
            )
        ],
    )
    write_csv(args.table, [json_record(row) for row in summary.to_dict("records")])
    write_csv(args.compare, [json_record(row) for row in table.to_dict("records")])
    dataset = get_dataset(study.dataset)
    result = metrics(headline, summary, grid, len(study.seeds)) | {
        "dataset": dataset.source_record(study.download.md5),
        "regularizer": study.regularizer,
        "regularizers": chosen_per_regularizer(table),
    }
    result["findings"] = claims(settings, args, grid, compared, result["chosen_by_validation"], dataset.chance)
    write_json(args.metrics, result)
    write_csv(args.headline_curve, mean_curve(read_table(headline_history, headline_stage)))
    head = result["headline"]
    log.info(
        "headline λ=%g over %d seeds: test accuracy %.3f (std %s), gap %+.3f",
        head["lambda"],
        len(study.seeds),
        head["test_accuracy"]["mean"],
        f"{head['test_accuracy']['std']:.3f}" if head["test_accuracy"]["std"] is not None else "—",
        head["gap_accuracy"]["mean"],
    )
    if chosen := result["chosen_by_validation"]:
        log.info(
            "validation accuracy picks λ=%g (test accuracy %.3f)", chosen["lambda"], chosen["test_accuracy"]["mean"]
        )
    nets = read_grid(args, study.regularizer)  # read once, for the registry's entry and the MLflow model
    write_chosen(args.chosen, nets, study.regularizer, chosen)
    record, _ = log_chosen_model(settings, args, chosen["lambda"] if chosen else None, nets)
    write_json(args.model_record, record)


def write_chosen(folder: Path, nets: dict, regularizer: str, chosen: dict | None) -> None:
    """The model registry's entry (dvc.yaml's `artifacts:`): the study's regulariser at the strength validation
    chose, every seed's net (of its grid's checkpoint, `nets`), with the choice's metrics (its strength, validation
    and test accuracy over seeds) inside model.pt and beside it in metrics.json. No strength to choose (every one
    diverged) writes the metrics alone."""
    record = {"regularizer": regularizer} | (chosen or {"lambda": None})
    with atomic_dir(folder) as tmp:  # the folder appears whole, or not at all: nothing of an earlier choice stays
        write_json(tmp / "metrics.json", record)
        if chosen is None:
            return
        members = [i for i, strength in enumerate(nets["lambdas"].tolist()) if strength == chosen["lambda"]]
        per_member = {"lambdas", "seeds", "state_dicts", "diverged_epoch"}
        save_tensors(
            RunFolder(tmp).model,
            {key: value for key, value in nets.items() if key not in per_member}  # regularizer, the net's shape
            | {key: nets[key][members] for key in ("lambdas", "seeds", "diverged_epoch") if key in nets}
            | {"state_dicts": [nets["state_dicts"][i] for i in members], "metrics": record},
        )


def claims(
    settings: Settings,
    args: argparse.Namespace,
    grid: pd.DataFrame,
    compared: pd.DataFrame,
    chosen: dict | None,
    chance: float,
) -> dict:
    """Every claim the study's page makes, as records (wdlab/cifar10/findings.py): the study regulariser's on its
    own grid (`grid`, against `chance`, guessing's accuracy), and each decayed grid's rotational equilibrium beside
    its accuracy (`compared`: every regulariser's final rows)."""
    study = settings.study(args.study)
    choice = chosen["lambda"] if chosen else None
    return {
        "study": findings.study(grid, study.strength_grid, choice, chance=chance),
        "equilibrium": {
            name: findings.equilibrium(
                findings.rotation(name, folder, study.train, stage.image_stage("train_images", args.study, name)),
                compared[compared["regularizer"] == name],
            )
            for name, folder in findings.decayed_grids(args.grids, settings, args.study).items()
        },
    }


def with_shared_baseline(every: pd.DataFrame) -> pd.DataFrame:
    """Every regulariser's final rows, plus the baseline's (l2) λ = 0 runs as strength 0 of a regulariser whose grid
    lacks 0 and whose strength 0 is the same training (`zero_is_plain_sgd`), so each is compared with no regulariser."""
    base = every[(every["regularizer"] == BASELINE) & (every["lambda"] == 0)]
    shared = [
        base.assign(regularizer=r)
        for r in sharing_baseline_zero(REGULARIZERS)
        if not ((every["regularizer"] == r) & (every["lambda"] == 0)).any()
    ]
    return (
        pd.concat([every, *shared]).sort_values(["regularizer", "lambda", "seed"], kind="stable").reset_index(drop=True)
    )


def chosen_per_regularizer(table: pd.DataFrame) -> dict:
    """Each regulariser at the strength with the highest mean validation accuracy: what it reaches there; and its
    validation and test accuracy at every strength, the choice's evidence and what stays comparable when it moves."""
    chosen = {}
    for regularizer in REGULARIZERS:
        rows = table[table["regularizer"] == regularizer]
        best = best_lambda(rows, "valid_accuracy_mean", higher_is_better=True)
        at = rows[rows["lambda"] == best].iloc[0] if best is not None else None
        chosen[regularizer] = (
            {"valid_strength": best}
            | {key: stats_of(at, key) if at is not None else None for key in COMPARED}
            | {"by_strength": by_strength(rows, ("valid_accuracy", "test_accuracy"))}
        )
    return chosen


def read_grid(args: argparse.Namespace, regularizer: str) -> dict:
    """The checkpoint of the regulariser's grid (every strength and seed), as `train_images@<study>-<regularizer>`
    wrote it."""
    made_by = stage.image_stage("train_images", args.study, regularizer)
    return load_tensors(RunFolder(args.grids / regularizer).model, made_by=made_by, required=GRID_KEYS)


def log_chosen_model(
    settings: Settings, args: argparse.Namespace, chosen: float | None, grid: dict
) -> tuple[dict, str | None]:
    """The chosen strength's net (first seed) of the study's regulariser as an MLflow model on its grid's run, ready
    for the UI's Models view, `mlflow.pytorch.load_model` and the model registry. Returns the record of what was
    chosen (the grid's stage and model md5 find that run, `tracking.run_filter`; its model is `runs:/<run id>/model`)
    and the model's URI, which stays out of the record: it would change the record's hash at every run. `grid`: the
    grid's checkpoint."""
    study = settings.study(args.study)
    regularizer = study.regularizer
    record: dict[str, Any] = {"regularizer": regularizer, "lambda": chosen}
    if chosen is None:
        return record, None
    import torch

    from wdlab.cifar10.model import ImageClassifier, make_net

    dataset = get_dataset(study.dataset)
    folder, made_by = RunFolder(args.grids / regularizer), stage.image_stage("train_images", args.study, regularizer)
    grid_record = read_json(folder.record, made_by=made_by, required=("stage", "model_md5"))
    member = grid["lambdas"].tolist().index(chosen)
    record |= {"seed": int(grid["seeds"][member]), "stage": made_by, "model_md5": grid_record["model_md5"]}
    tracker = Tracker(settings.tracking, settings.tracking.experiment(args.study))
    run_id = tracker.find_run(grid_record)
    if run_id is None:
        return record, None
    net = make_net(grid)  # dropout has no weights: the trained net serves without it, as in eval mode
    net.load_state_dict(grid["state_dicts"][member])
    example = torch.randint(
        0, 256, (2, *dataset.image_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    classifier = ImageClassifier(net, dataset.mean, dataset.std).eval()
    uri = tracker.log_model(run_id, classifier, example, code=Path(wdlab.__file__).parent)
    log.info("logged the %s %g model (seed %d) as %s", regularizer, chosen, record["seed"], uri)
    return record, uri


def final_rows(path: Path, made_by: str) -> pd.DataFrame:
    """The last recorded epoch of every (seed, λ) of a training run; a run that diverged stopped at the epoch marked
    so."""
    history = read_table(
        path,
        made_by=made_by,
        required=("regularizer", "seed", "lambda", "epoch", "diverged", *FINAL_KEYS),
    )
    return last_epochs(history)


def metrics(headline: pd.DataFrame, summary: pd.DataFrame, finals: pd.DataFrame, seeds: int) -> dict:
    """The DVC metrics file: per λ each final metric's mean, std and 95 % interval over seeds, and the λ that
    validation picks (highest mean validation accuracy) with its gain over λ = 0, seed by seed."""
    head = seed_summary(headline, FINAL_KEYS).iloc[0]
    by_lambda = summary.set_index("lambda", drop=False)
    top_test = best_lambda(summary, "test_accuracy_mean", higher_is_better=True)
    return {
        "seeds": seeds,
        "headline": {"lambda": float(head["lambda"])} | summary_of(head, int(headline["epochs_run"].min())),
        "grid": {
            f"lambda_{row['lambda']:g}": summary_of(row, int(row["epochs_run"])) for row in summary.to_dict("records")
        },
        "chosen_by_validation": validation_choice(summary, finals),
        # Descriptive only: a λ chosen by test accuracy would make that test accuracy an optimistic estimate.
        "highest_test_accuracy": None
        if top_test is None
        else {
            "lambda": top_test,
            "test_accuracy": stats_of(by_lambda.loc[top_test], "test_accuracy"),
        },
    }


def summary_of(row: Mapping[str, Any], epochs_run: int) -> dict:
    return {"diverged": int(row["diverged"]), "epochs_run": epochs_run} | {
        key: stats_of(row, key) for key in FINAL_KEYS
    }


def parser() -> argparse.ArgumentParser:
    cli = stage.add_study(
        stage.parser_with_paths(
            __doc__,
            "python -m stages.evaluate_images",
            {
                "headline": "the headline run's folder: its per-epoch history, per seed",
                "grids": "the grids' folder: each regulariser's history, weights and run record (its MLflow run)",
                "metrics": "the DVC metrics file (output)",
                "by-seed": "final metrics per (regulariser, seed, strength), long format (output)",
                "table": (
                    "the study's regulariser per strength: mean, std and 95 % interval over seeds, for dvc plots "
                    "(output)"
                ),
                "compare": "every regulariser per strength: mean, std and 95 % interval over seeds (output)",
                "headline-curve": "the headline run's per-epoch curves averaged over seeds, for dvc plots (output)",
                "chosen": (
                    "the validation-chosen strength's nets, every seed, and that choice's metrics: the model "
                    "registry's entry (output folder: model.pt, metrics.json)"
                ),
                "model-record": "which model was logged to MLflow, its URI (output)",
            },
        )
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
