"""Train the CIFAR-10 residual net on every seed: the headline run (λ = cifar10.wd) or one run per λ of cifar10.lambda_grid."""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
from pathlib import Path

import torch

from wdlab import stage
from wdlab.cifar10.data import SPLITS, Splits, load_splits
from wdlab.cifar10.training import RunResult, train
from wdlab.device import Formats, device_formats, pick_device
from wdlab.files import save_tensors, write_csv, write_json
from wdlab.results import flatten
from wdlab.settings import Settings
from wdlab.tracking import Tracker, lambda_params, training_run_name

log = logging.getLogger("wd-lab.train_cifar10")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.cifar10, settings.cifar10.seeds
    lambdas = (study.wd,) if args.run == "headline" else study.lambda_grid
    splits = load_splits(args.data, study.data)
    device = pick_device(settings.device)
    formats = device_formats(device, study.train.mixed_precision)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_cifar10)  # fails fast, before training
    setup = run_setup(splits, formats)
    params = {"seeds": len(seeds)} | flatten(setup) | flatten({"data": study.data.model_dump(), "model": study.model.model_dump(), "train": study.train.model_dump()})
    log.info("training %s run on %s (%s), %s images; λ ∈ %s, seeds %s", args.run, device, formats.describe(), setup["n_images"], list(lambdas), list(seeds))
    splits = splits.to(device)  # the whole dataset as uint8 tensors on the device, once

    results = []
    with tracker.run(training_run_name(args.run, lambdas), params | lambda_params(lambdas), f"cifar10-{args.run}") as run_id:
        for lam, seed in itertools.product(lambdas, seeds):
            with tracker.run(f"λ={lam:g} seed {seed}", params | {"lambda": lam, "seed": seed}, f"cifar10-{args.run}-member", nested=True) as member:
                result = train(splits, study, lam, seed, formats)
                log_result(tracker, member, result, study.model.width)
            results.append(result)
        tracker.log_history(run_id, {}, seed_aggregates(results))

    save_tensors(args.model, checkpoint(results, study.model.width))
    write_json(args.record, tracker.run_record(run_id) | setup | {"classes": list(splits.classes)})
    write_csv(args.history, history_rows(results))
    write_csv(args.layer_norms, layer_norm_rows(results))
    for result in results:
        row = result.final
        state = f"diverged at epoch {result.diverged_epoch}" if result.diverged_epoch else f"{result.seconds:.0f} s"
        log.info(
            "λ=%-7g seed %d  train acc %.3f  valid acc %.3f  test acc %.3f  ‖θ‖ %.2f  (%s)",
            result.weight_decay, result.seed, row["train_accuracy"], row["valid_accuracy"], row["test_accuracy"], row["w_norm"], state,
        )


def run_setup(splits: Splits, formats: Formats) -> dict:
    """How the run was made, for MLflow params and the run record the report reads: device, formats, image counts."""
    return {
        "device": formats.device.type,
        "formats": formats.describe(),
        "n_images": {name: len(getattr(splits, name).labels) for name in SPLITS},
    }


def seed_aggregates(results: list[RunResult]) -> dict[str, float]:
    """The parent run's summary: per λ, each final metric's mean and standard deviation over seeds."""
    lambdas = sorted({r.weight_decay for r in results})
    summary = {}
    for lam in lambdas:
        finals = [r.final for r in results if r.weight_decay == lam]
        suffix = "" if len(lambdas) == 1 else f".lambda_{lam:g}"
        for name in finals[0]:
            values = torch.tensor([row[name] for row in finals], dtype=torch.float64)
            summary[f"final_{name}.mean{suffix}"] = values.nanmean().item()
            if values.isfinite().sum() > 1:
                summary[f"final_{name}.std{suffix}"] = values[values.isfinite()].std().item()
    return summary


def log_result(tracker: Tracker, run_id: str | None, result: RunResult, width: int) -> None:
    """Per-epoch curves (step = epoch), final values, the divergence flag and the trained weights."""
    series = {name: [row[name] for row in result.history] for name in result.history[0]}
    series |= {f"layer_norm.{layer}": [norms[layer] for norms in result.layer_norms] for layer in result.layer_norms[0]}
    final = {f"final_{name}": value for name, value in result.final.items()}
    final |= {"diverged": float(result.diverged_epoch is not None), "epochs_run": len(result.history) - 1}
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    tracker.log_history(run_id, series, final)
    if tracker.enabled and run_id is not None:
        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch) / f"model_lambda_{result.weight_decay:g}_seed_{result.seed}.pt"
            torch.save(model_file(result, width), weights)
            tracker.log_artifacts(run_id, [weights], folder="model")


def model_file(result: RunResult, width: int) -> dict:
    """One trained net: `ResNet(width).load_state_dict(file["state_dict"])` restores it."""
    return {"lambda": result.weight_decay, "seed": result.seed, "width": width, "state_dict": result.state_dict}


def checkpoint(results: list[RunResult], width: int) -> dict:
    """Every (λ, seed)'s trained weights: `ResNet(width).load_state_dict(state_dicts[i])` for lambdas[i], seeds[i]."""
    return {
        "lambdas": torch.tensor([r.weight_decay for r in results], dtype=torch.float64),
        "seeds": torch.tensor([r.seed for r in results]),
        "width": width,
        "state_dicts": [r.state_dict for r in results],
        "diverged_epoch": torch.tensor([-1 if r.diverged_epoch is None else r.diverged_epoch for r in results]),
    }


def history_rows(results: list[RunResult]) -> list[dict]:
    """Long format, one row per (seed, λ, epoch): what seaborn reads; `diverged` marks the epoch that did."""
    return [
        {"seed": r.seed, "lambda": r.weight_decay, "epoch": epoch} | row | {"diverged": epoch == r.diverged_epoch}
        for r in results
        for epoch, row in enumerate(r.history)
    ]


def layer_norm_rows(results: list[RunResult]) -> list[dict]:
    """Long format, one row per (seed, λ, epoch, layer): ‖W‖₂ of each conv and linear layer."""
    return [
        {"seed": r.seed, "lambda": r.weight_decay, "epoch": epoch, "layer": layer, "norm": norm}
        for r in results
        for epoch, norms in enumerate(r.layer_norms)
        for layer, norm in norms.items()
    ]


def parser() -> argparse.ArgumentParser:
    return stage.training_parser(
        __doc__, "python -m stages.train_cifar10", "cifar10.lambda_grid", "cifar10.wd",
        layer_norms="‖W‖ per layer and epoch, long format (output)",
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
