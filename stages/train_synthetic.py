"""Train the synthetic linear regression on every seed: one regulariser's whole strength grid at once
(synthetic.strengths.<regulariser>), or the headline run (synthetic.regularizer at strength `wd`), which also
reports its own metrics and mean curves: `dvc exp run -S wd=3` runs this stage alone."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
from pathlib import Path

import pandas as pd
import torch

from wdlab import stage
from wdlab.device import pick_device
from wdlab.errors import StageInputError
from wdlab.files import RunFolder, atomic_dir, save_tensors, write_csv, write_json
from wdlab.lineage import synthetic_datasets
from wdlab.results import flatten, mean_curve, seed_aggregates, seed_summary, stats_of
from wdlab.settings import Settings
from wdlab.synthetic.data import Split, load_dataset
from wdlab.synthetic.evaluation import EXACT, METRICS, evaluate_run
from wdlab.synthetic.references import reference_solution
from wdlab.synthetic.training import GridRun, train_grid
from wdlab.tracking import Tracker, member_params, strength_params, strength_run_name, training_run_name

log = logging.getLogger("wd-lab.train_synthetic")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.synthetic, settings.synthetic.seeds
    if args.run == "headline" and not (args.metrics and args.curve):
        raise StageInputError(
            "the headline run writes its metrics and mean curves: pass --metrics and --curve (see dvc.yaml)"
        )
    train_set, test_set = load_dataset(args.data, seeds)
    regularizer = study.regularizer if args.run == "headline" else args.run
    strengths = (settings.wd,) if args.run == "headline" else study.strengths.of(regularizer)
    device = pick_device(settings.device)
    torch.set_num_threads(
        1
    )  # tensors of ≤ S·G·d values: a 2nd thread gains nothing, and stalls each op when the other core is busy
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)  # fails fast, before training
    params = {"device": str(device), "seeds": len(seeds)} | flatten(
        {"data": study.data.model_dump(), "train": study.train.model_dump()}
    )
    log.info(
        "training %s run on %s: %s, strengths %s, %d seeds", args.run, device, regularizer, list(strengths), len(seeds)
    )
    role = "synthetic-headline" if args.run == "headline" else "synthetic-grid"
    data = synthetic_datasets(args.data, study, train_set, test_set) if tracker.enabled else {}  # seed → inputs

    with tracker.run(
        training_run_name(args.run, regularizer, strengths),
        params | strength_params(regularizer, strengths),
        role,
        datasets=data.get(None, ()),
    ) as run_id:
        result = train_grid(
            train_set, strengths, study.train, seeds, device, eval_sets={"test": test_set}, regularizer=regularizer
        )
        # The headline run is its one strength's run; a grid has a run per strength beside it.
        per_strength = (
            contextlib.nullcontext({strengths[0]: run_id})
            if args.run == "headline"
            else tracker.strength_runs(
                regularizer,
                strengths,
                params,
                f"{role}-strength",
                lambda strength: strength_run_name(regularizer, strength, len(seeds)),
                charts=("test_loss_mean", "gap_loss_mean", "w_norm_mean"),
                datasets=data.get(None, ()),
            )
        )
        with per_strength as strength_runs:
            for (s, seed), (g, strength) in itertools.product(enumerate(seeds), enumerate(strengths)):
                with tracker.run(
                    f"{regularizer} {strength:g} seed {seed}",
                    params | member_params(regularizer, strength, seed),
                    f"{role}-member",
                    nested=strength_runs[strength],
                    datasets=data.get(seed, ()),
                ) as member:
                    tracker.log_history(member, *curves(result, s, g))
            for g, strength in enumerate(strengths):
                tracker.log_history(strength_runs[strength], {}, seed_aggregates(final_rows(result, g)))

    trained = checkpoint(result) | exact_optima(train_set, regularizer, strengths)
    history = history_rows(result)
    with atomic_dir(args.out) as tmp:  # the folder appears whole, or not at all
        folder = RunFolder(tmp)
        model_md5 = save_tensors(folder.model, trained)
        write_json(folder.record, tracker.run_record(run_id, stage_name(args.run), args.out, model_md5))
        write_csv(folder.history, history)
    if args.run == "headline":
        write_json(args.metrics, headline_metrics(evaluate_run(trained, train_set, test_set), regularizer))
        write_csv(args.curve, mean_curve(pd.DataFrame(history)))
    final = {name: values[-1] for name, values in result.history.items()}  # [S, G]
    for g, strength in enumerate(strengths):
        log.info(
            "%s %-8g over %d seeds: train loss %.3g  test loss %.3g  ‖w‖ %.3f  zeros %.1f (means)",
            regularizer,
            strength,
            len(seeds),
            final["train_loss"][:, g].nanmean(),
            final["test_loss"][:, g].nanmean(),
            final["w_norm"][:, g].nanmean(),
            final["zeros"][:, g].nanmean(),
        )


def stage_name(run: str) -> str:
    """This run's stage in dvc.yaml: headline_synthetic, or train_synthetic@<regulariser> for a grid."""
    return "headline_synthetic" if run == "headline" else f"train_synthetic@{run}"


def curves(result: GridRun, s: int, g: int) -> tuple[dict, dict]:
    """Seed s, λ g: its per-epoch series and final values, for MLflow."""
    series = {name: values[:, s, g].tolist() for name, values in result.history.items()}
    final = {f"final_{name}": values[-1] for name, values in series.items()}
    final["diverged"] = float(result.diverged_epoch[s, g] >= 0)
    return series, final


def final_rows(result: GridRun, g: int) -> list[dict[str, float]]:
    """λ g's final values on each seed, with the generalisation gap in loss (test − train), for its summary."""
    rows = [
        {name: values[-1, s, g].item() for name, values in result.history.items()} for s in range(len(result.seeds))
    ]
    return [row | {"gap_loss": row["test_loss"] - row["train_loss"]} for row in rows]


def checkpoint(result: GridRun) -> dict:
    return {
        "regularizer": result.regularizer,
        "seeds": torch.tensor(result.seeds),
        "lambdas": torch.tensor(result.strengths, dtype=torch.float64),
        "weight": result.weight,  # [S, G, d]
        "bias": result.bias,  # [S, G]
        "diverged_epoch": result.diverged_epoch,  # [S, G], −1: did not diverge
    }


def exact_optima(train_set: Split, regularizer: str, strengths: tuple[float, ...]) -> dict:
    """The regulariser's exact optimum at each strength on each seed's training set (ridge, the lasso, dropout's
    per-feature ridge), stored beside the trained weights: made once with the grid, read by every evaluation."""
    optima = [reference_solution(regularizer, train_set, strength) for strength in strengths]
    return {
        "reference_weight": torch.stack([w for w, _ in optima], dim=1),
        "reference_bias": torch.stack([b for _, b in optima], dim=1),
    }


def headline_metrics(by_seed: pd.DataFrame, regularizer: str) -> dict:
    """The headline run's DVC metrics: each metric's mean, std and 95 % interval over seeds (evaluate_synthetic
    reports the grids the same way), what `dvc exp show` and `dvc metrics diff` compare across experiments."""
    head = seed_summary(by_seed, METRICS, untrained=EXACT).iloc[0]
    return {
        "seeds": int(head["seeds"]),
        "regularizer": regularizer,
        "headline": {"lambda": float(head["lambda"]), "diverged": int(head["diverged"])}
        | {m: stats_of(head, m) for m in METRICS},
    }


def history_rows(result: GridRun) -> list[dict]:
    """Long format, one row per (seed, strength, epoch): what seaborn and `dvc plots` read; `lambda` is the strength."""
    names = list(result.history)
    epochs = len(result.history[names[0]])
    return [
        {"regularizer": result.regularizer, "seed": seed, "lambda": strength, "epoch": epoch}
        | {name: result.history[name][epoch, s, g].item() for name in names}
        for s, seed in enumerate(result.seeds)
        for g, strength in enumerate(result.strengths)
        for epoch in range(epochs)
    ]


def parser() -> argparse.ArgumentParser:
    cli = stage.training_parser(__doc__, "python -m stages.train_synthetic", "synthetic.strengths", "wd")
    cli.add_argument("--metrics", type=Path, help="headline only: its metrics over seeds, a DVC metrics file (output)")
    cli.add_argument(
        "--curve", type=Path, help="headline only: its per-epoch curves averaged over seeds, for dvc plots (output)"
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
