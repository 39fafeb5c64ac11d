"""Train the CIFAR-10 residual net: the headline run (λ = cifar10.wd) or one run per λ of cifar10.lambda_grid."""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from stages import cifar, paths
from stages.common import pick_device, run_stage, stage_parser
from stages.files import save_tensors, write_csv, write_json
from stages.settings import Settings
from stages.tracking import Tracker, flatten, lambda_params, run_tags, training_run_name

log = logging.getLogger("wd-lab.train_cifar10")

RUNS = ("headline", "grid")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study = settings.cifar10
    lambdas = (study.wd,) if args.run == "headline" else study.lambda_grid
    splits = cifar.load_splits(paths.CIFAR_DATA, study.data, settings.seed)
    device = pick_device(settings.device)
    formats = cifar.device_formats(device, study.train.mixed_precision)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_cifar10)  # fails fast, before training
    params = run_params(settings, splits, formats)
    log.info(
        "training %s run on %s (%s): %d train, %d validation, %d test images; λ ∈ %s",
        args.run, device, formats.describe(), len(splits.train.labels), len(splits.valid.labels),
        len(splits.test.labels), list(lambdas),
    )
    splits = splits.to(device)  # the whole dataset as uint8 tensors on the device, once

    results = []
    with tracker.run(training_run_name(args.run, lambdas), params | lambda_params(lambdas), run_tags(f"cifar10-{args.run}")) as run_id:
        for lam in lambdas:
            with _member_run(tracker, args.run, lam, params, run_id) as member_id:
                result = cifar.train(splits, study, lam, settings.seed, formats)
                log_result(tracker, member_id, result, study.model.width)
            results.append(result)

    save_tensors(paths.cifar_model(args.run), checkpoint(results, study.model.width, splits, formats))
    write_json(paths.cifar_run_record(args.run), tracker.run_record(run_id))
    write_csv(paths.cifar_history(args.run), history_rows(results))
    write_csv(paths.cifar_layer_norms(args.run), layer_norm_rows(results))
    for result in results:
        row = result.final
        state = f"diverged at epoch {result.diverged_epoch}" if result.diverged_epoch else f"{result.seconds:.0f} s"
        log.info(
            "λ=%-7g train acc %.3f  valid acc %.3f  test acc %.3f  ‖θ‖ %.2f  (%s)",
            result.weight_decay, row["train_accuracy"], row["valid_accuracy"], row["test_accuracy"], row["w_norm"], state,
        )


def run_params(settings: Settings, splits: cifar.Splits, formats: cifar.Formats) -> dict:
    study = settings.cifar10
    return (
        {"seed": settings.seed, "device": str(formats.device), "formats": formats.describe()}
        | {"n_train": len(splits.train.labels), "n_valid": len(splits.valid.labels), "n_test": len(splits.test.labels)}
        | flatten("data", study.data) | flatten("model", study.model) | flatten("train", study.train)
    )


@contextlib.contextmanager
def _member_run(tracker: Tracker, run: str, lam: float, params: dict, parent_id: str | None) -> Iterator[str | None]:
    """The MLflow run one λ logs to: the headline run itself, or a run nested under the grid's parent."""
    if run == "headline":
        yield parent_id
        return
    with tracker.run(f"λ={lam:g}", params | {"lambda": lam}, run_tags("cifar10-grid-member"), parent_id=parent_id) as child:
        yield child


def log_result(tracker: Tracker, run_id: str | None, result: cifar.RunResult, width: int) -> None:
    """Per-epoch curves (step = epoch), final values, the divergence flag and the trained weights."""
    series = {name: [row[name] for row in result.history] for name in result.history[0]}
    series |= {f"layer_norm.{layer}": [norms[layer] for norms in result.layer_norms] for layer in result.layer_norms[0]}
    final = {f"final_{name}": value for name, value in result.final.items()}
    final |= {"diverged": float(result.diverged_epoch is not None), "epochs_run": len(result.history) - 1}
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    tracker.log_metrics(run_id, series, final)
    if tracker.enabled and run_id is not None:
        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch) / f"model_lambda_{result.weight_decay:g}.pt"
            torch.save(model_file(result, width), weights)
            tracker.log_artifacts(run_id, [weights], folder="model")


def model_file(result: cifar.RunResult, width: int) -> dict:
    """One trained net: `cifar.ResNet(width).load_state_dict(file["state_dict"])` restores it."""
    return {"lambda": result.weight_decay, "width": width, "state_dict": result.state_dict}


def checkpoint(results: list[cifar.RunResult], width: int, splits: cifar.Splits, formats: cifar.Formats) -> dict:
    """Every λ's trained weights and how they were made: `cifar.ResNet(width).load_state_dict(state_dicts[g])`."""
    return {
        "lambdas": torch.tensor([r.weight_decay for r in results], dtype=torch.float64),
        "width": width,
        "classes": list(splits.classes),
        "n_images": {name: len(getattr(splits, name).labels) for name in cifar.SPLITS},
        "device": formats.device.type,
        "formats": formats.describe(),
        "state_dicts": [r.state_dict for r in results],
        "diverged_epoch": torch.tensor([-1 if r.diverged_epoch is None else r.diverged_epoch for r in results]),
    }


def history_rows(results: list[cifar.RunResult]) -> list[dict]:
    """Long format, one row per (λ, epoch): what seaborn and `dvc plots` read."""
    return [
        {"lambda": r.weight_decay, "epoch": epoch} | row
        for r in results
        for epoch, row in enumerate(r.history)
    ]


def layer_norm_rows(results: list[cifar.RunResult]) -> list[dict]:
    """Long format, one row per (λ, epoch, layer): ‖W‖₂ of each conv and linear layer."""
    return [
        {"lambda": r.weight_decay, "epoch": epoch, "layer": layer, "norm": norm}
        for r in results
        for epoch, norms in enumerate(r.layer_norms)
        for layer, norm in norms.items()
    ]


def parser() -> argparse.ArgumentParser:
    cli = stage_parser(__doc__, "python -m stages.train_cifar10")
    cli.add_argument("run", choices=RUNS, help="headline: λ = cifar10.wd; grid: every λ of cifar10.lambda_grid")
    return cli


if __name__ == "__main__":
    run_stage(main, parser())
