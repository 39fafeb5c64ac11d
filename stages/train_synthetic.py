"""Train the synthetic linear regression: the headline run (λ = `wd`) or the whole λ grid at once."""

from __future__ import annotations

import argparse
import logging

import torch

from stages import linreg, paths
from stages.common import pick_device, run_stage, stage_parser
from stages.files import save_tensors, write_csv, write_json
from stages.settings import Settings
from stages.tracking import Tracker, flatten, lambda_params, run_tags, training_run_name

log = logging.getLogger("wd-lab.train_synthetic")

RUNS = ("headline", "grid")


def main(settings: Settings, args: argparse.Namespace) -> None:
    train_set, test_set = linreg.load_dataset(paths.SYNTHETIC_DATA)
    lambdas = (settings.wd,) if args.run == "headline" else settings.synthetic.lambda_grid
    device = pick_device(settings.device)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)  # fails fast, before training
    params = {"seed": settings.seed, "device": str(device)} | flatten("data", settings.synthetic.data) | flatten(
        "train", settings.synthetic.train
    )
    log.info("training %s run on %s: λ ∈ %s", args.run, device, list(lambdas))

    with tracker.run(training_run_name(args.run, lambdas), params | lambda_params(lambdas), run_tags(f"synthetic-{args.run}")) as run_id:
        result = linreg.train_grid(
            train_set, lambdas, settings.synthetic.train, settings.seed, device, eval_sets={"test": test_set}
        )
        if args.run == "headline":
            tracker.log_metrics(run_id, *_metrics_of(result, 0))
        else:
            for g, lam in enumerate(lambdas):
                with tracker.run(f"λ={lam:g}", params | {"lambda": lam}, run_tags("synthetic-grid-member"), parent_id=run_id) as child:
                    tracker.log_metrics(child, *_metrics_of(result, g))

    save_tensors(paths.synthetic_model(args.run), _checkpoint(result))
    write_json(paths.synthetic_run_record(args.run), tracker.run_record(run_id))
    write_csv(paths.synthetic_history(args.run), history_rows(result))
    for lam, train_loss, test_loss, w_norm in zip(lambdas, result.final("train_loss"), result.final("test_loss"), result.final("w_norm")):
        log.info("λ=%-8g train loss %.3g  test loss %.3g  ‖w‖ %.3f", lam, train_loss, test_loss, w_norm)


def _metrics_of(result: linreg.GridRun, g: int) -> tuple[dict, dict]:
    series = {name: values[:, g].tolist() for name, values in result.history.items()}
    final = {f"final_{name}": values[-1] for name, values in series.items()}
    final["diverged"] = float(result.diverged_epoch[g] is not None)
    return series, final


def _checkpoint(result: linreg.GridRun) -> dict:
    return {
        "lambdas": torch.tensor(result.lambdas, dtype=torch.float64),
        "weight": result.weight,
        "bias": result.bias,
        "diverged_epoch": torch.tensor([-1 if e is None else e for e in result.diverged_epoch]),
    }


def history_rows(result: linreg.GridRun) -> list[dict]:
    """Long format, one row per (λ, epoch): what seaborn and `dvc plots` read."""
    names = list(result.history)
    rows = []
    for g, lam in enumerate(result.lambdas):
        for epoch in range(len(result.history[names[0]])):
            rows.append({"lambda": lam, "epoch": epoch} | {name: result.history[name][epoch, g].item() for name in names})
    return rows


def parser() -> argparse.ArgumentParser:
    cli = stage_parser(__doc__, "python -m stages.train_synthetic")
    cli.add_argument("run", choices=RUNS, help="headline: λ = wd from params.yaml; grid: every λ of synthetic.lambda_grid")
    return cli


if __name__ == "__main__":
    run_stage(main, parser())
