"""Train the synthetic linear regression: the headline run (λ = `wd`) or the whole λ grid at once."""

from __future__ import annotations

import argparse
import logging

import torch

from wdlab import stage
from wdlab.device import pick_device
from wdlab.files import save_tensors, write_csv, write_json
from wdlab.results import flatten
from wdlab.settings import Settings
from wdlab.synthetic.data import load_dataset
from wdlab.synthetic.training import GridRun, train_grid
from wdlab.tracking import Tracker, lambda_params, training_run_name

log = logging.getLogger("wd-lab.train_synthetic")


def main(settings: Settings, args: argparse.Namespace) -> None:
    train_set, test_set = load_dataset(args.data)
    lambdas = (settings.wd,) if args.run == "headline" else settings.synthetic.lambda_grid
    device = pick_device(settings.device)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)  # fails fast, before training
    study = settings.synthetic
    params = {"seed": settings.seed, "device": str(device)} | flatten({"data": study.data.model_dump(), "train": study.train.model_dump()})
    log.info("training %s run on %s: λ ∈ %s", args.run, device, list(lambdas))

    with tracker.run(training_run_name(args.run, lambdas), params | lambda_params(lambdas), f"synthetic-{args.run}") as run_id:
        result = train_grid(train_set, lambdas, study.train, settings.seed, device, eval_sets={"test": test_set})
        if args.run == "headline":
            tracker.log_history(run_id, *curves(result, 0))
        else:
            for g, lam in enumerate(lambdas):
                with tracker.run(f"λ={lam:g}", params | {"lambda": lam}, "synthetic-grid-member", nested=True) as member:
                    tracker.log_history(member, *curves(result, g))

    save_tensors(args.model, checkpoint(result))
    write_json(args.record, tracker.run_record(run_id))
    write_csv(args.history, history_rows(result))
    for lam, train_loss, test_loss, w_norm in zip(lambdas, result.final("train_loss"), result.final("test_loss"), result.final("w_norm")):
        log.info("λ=%-8g train loss %.3g  test loss %.3g  ‖w‖ %.3f", lam, train_loss, test_loss, w_norm)


def curves(result: GridRun, g: int) -> tuple[dict, dict]:
    """Model g's per-epoch series and its final values, for MLflow."""
    series = {name: values[:, g].tolist() for name, values in result.history.items()}
    final = {f"final_{name}": values[-1] for name, values in series.items()}
    final["diverged"] = float(result.diverged_epoch[g] is not None)
    return series, final


def checkpoint(result: GridRun) -> dict:
    return {
        "lambdas": torch.tensor(result.lambdas, dtype=torch.float64),
        "weight": result.weight,
        "bias": result.bias,
        "diverged_epoch": torch.tensor([-1 if e is None else e for e in result.diverged_epoch]),
    }


def history_rows(result: GridRun) -> list[dict]:
    """Long format, one row per (λ, epoch): what seaborn and `dvc plots` read."""
    names = list(result.history)
    return [
        {"lambda": lam, "epoch": epoch} | {name: result.history[name][epoch, g].item() for name in names}
        for g, lam in enumerate(result.lambdas)
        for epoch in range(len(result.history[names[0]]))
    ]


def parser() -> argparse.ArgumentParser:
    return stage.training_parser(__doc__, "python -m stages.train_synthetic", "synthetic.lambda_grid", "wd")


if __name__ == "__main__":
    stage.run_stage(main, parser())
