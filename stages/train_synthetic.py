"""Train the synthetic linear regression on every seed: the headline run (synthetic.regularizer at strength `wd`) or
one regulariser's whole strength grid at once (synthetic.strengths.<regulariser>)."""

from __future__ import annotations

import argparse
import itertools
import logging

import torch

from wdlab import stage
from wdlab.device import pick_device
from wdlab.files import save_tensors, write_csv, write_json
from wdlab.results import flatten, seed_aggregates
from wdlab.settings import Settings
from wdlab.synthetic.data import Split, load_dataset
from wdlab.synthetic.references import reference_solution
from wdlab.synthetic.training import GridRun, train_grid
from wdlab.tracking import Tracker, lambda_params, member_params, training_run_name

log = logging.getLogger("wd-lab.train_synthetic")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.synthetic, settings.synthetic.seeds
    train_set, test_set = load_dataset(args.data, seeds)
    regularizer = study.regularizer if args.run == "headline" else args.run
    lambdas = (settings.wd,) if args.run == "headline" else study.strengths.of(regularizer)
    device = pick_device(settings.device)
    torch.set_num_threads(1)  # tensors of ≤ S·G·d values: a 2nd thread gains nothing, and stalls each op when the other core is busy
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)  # fails fast, before training
    params = {"device": str(device), "seeds": len(seeds)} | flatten({"data": study.data.model_dump(), "train": study.train.model_dump()})
    log.info("training %s run on %s: %s, strengths %s, %d seeds", args.run, device, regularizer, list(lambdas), len(seeds))
    role = "synthetic-headline" if args.run == "headline" else "synthetic-grid"

    with tracker.run(training_run_name(args.run, regularizer, lambdas), params | lambda_params(regularizer, lambdas), role) as run_id:
        result = train_grid(train_set, lambdas, study.train, seeds, device, eval_sets={"test": test_set}, regularizer=regularizer)
        for (s, seed), (g, lam) in itertools.product(enumerate(seeds), enumerate(lambdas)):
            with tracker.run(f"{regularizer} {lam:g} seed {seed}", params | member_params(regularizer, lam, seed), f"{role}-member", nested=True) as member:
                tracker.log_history(member, *curves(result, s, g))
        finals = {lam: [{name: values[-1, s, g].item() for name, values in result.history.items()} for s in range(len(seeds))]
                  for g, lam in enumerate(lambdas)}
        tracker.log_history(run_id, {}, seed_aggregates(finals))

    save_tensors(args.model, checkpoint(result) | exact_optima(train_set, regularizer, lambdas))
    write_json(args.record, tracker.run_record(run_id))
    write_csv(args.history, history_rows(result))
    final = {name: values[-1] for name, values in result.history.items()}  # [S, G]
    for g, lam in enumerate(lambdas):
        log.info(
            "%s %-8g over %d seeds: train loss %.3g  test loss %.3g  ‖w‖ %.3f  zeros %.1f (means)", regularizer,
            lam, len(seeds), final["train_loss"][:, g].nanmean(), final["test_loss"][:, g].nanmean(), final["w_norm"][:, g].nanmean(),
            final["zeros"][:, g].nanmean(),
        )


def curves(result: GridRun, s: int, g: int) -> tuple[dict, dict]:
    """Seed s, λ g: its per-epoch series and final values, for MLflow."""
    series = {name: values[:, s, g].tolist() for name, values in result.history.items()}
    final = {f"final_{name}": values[-1] for name, values in series.items()}
    final["diverged"] = float(result.diverged_epoch[s, g] >= 0)
    return series, final


def checkpoint(result: GridRun) -> dict:
    return {
        "regularizer": result.regularizer,
        "seeds": torch.tensor(result.seeds),
        "lambdas": torch.tensor(result.lambdas, dtype=torch.float64),
        "weight": result.weight,  # [S, G, d]
        "bias": result.bias,  # [S, G]
        "diverged_epoch": result.diverged_epoch,  # [S, G], −1: did not diverge
    }


def exact_optima(train_set: Split, regularizer: str, lambdas: tuple[float, ...]) -> dict:
    """The regulariser's exact optimum at each strength on each seed's training set (ridge, the lasso, dropout's
    per-feature ridge), stored beside the trained weights: made once with the grid, read by every evaluation."""
    optima = [reference_solution(regularizer, train_set, lam) for lam in lambdas]
    return {"reference_weight": torch.stack([w for w, _ in optima], dim=1), "reference_bias": torch.stack([b for _, b in optima], dim=1)}


def history_rows(result: GridRun) -> list[dict]:
    """Long format, one row per (seed, strength, epoch): what seaborn and `dvc plots` read; `lambda` is the strength."""
    names = list(result.history)
    epochs = len(result.history[names[0]])
    return [
        {"regularizer": result.regularizer, "seed": seed, "lambda": lam, "epoch": epoch} | {name: result.history[name][epoch, s, g].item() for name in names}
        for s, seed in enumerate(result.seeds)
        for g, lam in enumerate(result.lambdas)
        for epoch in range(epochs)
    ]


def parser() -> argparse.ArgumentParser:
    return stage.training_parser(__doc__, "python -m stages.train_synthetic", "synthetic.strengths", "wd")


if __name__ == "__main__":
    stage.run_stage(main, parser())
