"""Train the CIFAR-10 residual net on every seed: one regulariser's whole grid (a run per strength of
cifar10.strengths.<regulariser>), or the headline run (cifar10.regularizer at strength cifar10.wd), which takes
that grid's runs for the strength when the grid trained them with the same settings and trains only when it did
not (`dvc exp run -S cifar10.wd=X` with X outside the grid trains just that strength)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from wdlab import stage
from wdlab.cifar10.data import SPLITS, Splits, load_splits
from wdlab.cifar10.grid import RunSpec, as_record, from_record, train_run
from wdlab.cifar10.model import ResNet, scale_invariant_layers
from wdlab.cifar10.training import RunResult
from wdlab.device import Formats, device_formats, pick_device
from wdlab.errors import StageError
from wdlab.executor import Placement, check_address, check_device, run_all
from wdlab.files import (
    RunFolder,
    atomic_dir,
    load_tensors,
    read_json,
    read_table,
    save_tensors,
    write_csv,
    write_json,
)
from wdlab.results import flatten, seed_aggregates
from wdlab.runcache import RunCache
from wdlab.settings import CifarSettings, ExecutorSettings, Settings
from wdlab.tracking import Tracker, member_params, strength_params, training_run_name

log = logging.getLogger("wd-lab.train_cifar10")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.cifar10, settings.cifar10.seeds
    regularizer = study.regularizer if args.run == "headline" else args.run
    strengths = (study.wd,) if args.run == "headline" else study.strengths.of(regularizer)
    formats = device_formats(pick_device(settings.device), study.train.mixed_precision)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_cifar10)  # fails fast, before training
    made_as = fingerprint(study, formats, settings.executor)
    reused = reuse_grid(args, regularizer, study.wd, made_as) if args.run == "headline" else None
    placements: dict[str, dict] = {}
    if reused:
        grid_run_id, results, setup = reused
        log.info(
            "%s %g was trained by its grid with these settings: its %d runs are the headline's, none retrained",
            regularizer,
            study.wd,
            len(seeds),
        )
    else:
        if settings.executor.kind == "ray":
            check_device(settings.executor, formats.device.type)
            check_address(settings.executor)  # a cluster that is not there fails in seconds, before any run starts
        splits = load_splits(args.data, study.data)
        setup = run_setup(splits, formats) | {"fingerprint": made_as, "regularizer": regularizer}
        cache = RunCache(f"train_cifar10-{args.run}", made_as)
    params = (
        {"seeds": len(seeds)}
        | flatten({k: setup[k] for k in ("device", "formats", "n_images")})
        | flatten(
            {"data": study.data.model_dump(), "model": study.model.model_dump(), "train": study.train.model_dump()}
        )
    )

    role = "cifar10-headline" if args.run == "headline" else "cifar10-grid"
    with tracker.run(
        training_run_name(args.run, regularizer, strengths),
        params | strength_params(regularizer, strengths),
        role,
        tags={"wd_lab.reused_from": str(grid_run_id)} if reused else None,
    ) as run_id:
        if reused:
            for result in results:
                with member_run(tracker, result, params, role) as member:
                    log_result(tracker, member, result, study.model.width, curves=True)
        else:
            log.info(
                "training %s run on %s, %s images; %s ∈ %s, seeds %s; executor %s",
                args.run,
                formats.describe(),
                setup["n_images"],
                regularizer,
                list(strengths),
                list(seeds),
                settings.executor.kind,
            )
            specs = [
                RunSpec(study, regularizer, strength, seed, formats.device.type)
                for strength, seed in itertools.product(strengths, seeds)
            ]
            results, placements = train_all(splits, specs, settings.executor, cache, tracker, params, role)
        finals: dict[float, list] = {}
        for result in results:
            finals.setdefault(result.strength, []).append(result.final)
        tracker.log_history(run_id, {}, seed_aggregates(finals))

    with atomic_dir(args.out) as tmp:  # the folder appears whole, or not at all
        folder = RunFolder(tmp)
        save_tensors(folder.model, checkpoint(results, study.model.width))
        write_json(
            folder.record,
            tracker.run_record(run_id)
            | setup
            | ({"executor": settings.executor.kind, "runs": placements} if placements else {}),
        )
        write_csv(folder.history, history_rows(results))
        write_csv(folder.layer_norms, layer_norm_rows(results, study.model.width))
    if not reused:
        cache.clear()  # the outputs hold every run now
    for result in results:
        row = result.final
        state = f"diverged at epoch {result.diverged_epoch}" if result.diverged_epoch else f"{result.seconds:.0f} s"
        log.info(
            "%s %-7g seed %d  train acc %.3f  valid acc %.3f  test acc %.3f  ‖θ‖ %.2f  (%s)",
            result.regularizer,
            result.strength,
            result.seed,
            row["train_accuracy"],
            row["valid_accuracy"],
            row["test_accuracy"],
            row["w_norm"],
            state,
        )


def train_all(
    splits: Splits,
    specs: list[RunSpec],
    executor: ExecutorSettings,
    cache: RunCache,
    tracker: Tracker,
    params: dict,
    role: str,
) -> tuple[list[RunResult], dict[str, dict]]:
    """Every run of `specs`, each its own nested MLflow run, in the order of `specs`; and where each ran.

    Runs a failed earlier attempt finished come from the run cache; the executor trains the rest. Under `local` a run's
    curves reach MLflow as its epochs end; under `ray` the run's whole record is logged when it comes back. Either way
    only this process writes MLflow and the outputs.
    """
    width = specs[0].study.model.width
    results: dict[str, RunResult] = {}
    placements: dict[str, dict] = {}
    members: dict[str, str | None] = {}  # spec key → its MLflow run, while it is open
    for spec in specs:
        if (record := cache.load(spec.key)) is not None:
            results[spec.key] = from_record(record)
            placements[spec.key] = {
                "regularizer": spec.regularizer,
                "lambda": spec.strength,
                "seed": spec.seed,
                "resumed": True,
            }
            with member_run(tracker, results[spec.key], params, role) as member:
                tracker.set_tags(member, {"wd_lab.resumed": "true"})
                log_result(tracker, member, results[spec.key], width, curves=True)
    if results:
        log.info(
            "%d of %d runs were finished by an earlier attempt (run cache): training the other %d",
            len(results),
            len(specs),
            len(specs) - len(results),
        )

    @contextlib.contextmanager
    def open_run(spec: RunSpec) -> Iterator:
        with member_run(
            tracker,
            RunResult(spec.regularizer, spec.strength, spec.seed),
            params,
            role,
            system_metrics=executor.kind == "local",
        ) as member:
            members[spec.key] = member

            def live(epoch: int, row: dict[str, float], norms: dict[str, float], angles: dict[str, float]) -> None:
                tracker.log_epoch(member, epoch_metrics(row, norms, angles), epoch)

            yield live

    def finish(spec: RunSpec, result: RunResult, placement: Placement) -> None:
        cache.save(spec.key, as_record(result))  # first: a failure from here on never costs this run again
        tracker.set_tags(members[spec.key], placement.as_tags())
        log_result(tracker, members[spec.key], result, width, curves=not placement.live)
        results[spec.key] = result
        placements[spec.key] = {
            "regularizer": spec.regularizer,
            "lambda": spec.strength,
            "seed": spec.seed,
            "node": placement.node,
            "host": placement.host,
            "seconds": round(placement.seconds, 1),
        }

    run_all([spec for spec in specs if spec.key not in results], train_run, splits, executor, open_run, finish)
    return [results[spec.key] for spec in specs], placements


def member_run(
    tracker: Tracker, run: RunResult, params: dict, role: str, **options: bool
) -> contextlib.AbstractContextManager:
    """The MLflow run of one (regulariser, strength, seed), nested under the stage's run."""
    return tracker.run(
        f"{run.regularizer} {run.strength:g} seed {run.seed}",
        params | member_params(run.regularizer, run.strength, run.seed),
        f"{role}-member",
        nested=True,
        **options,
    )


def fingerprint(study: CifarSettings, formats: Formats, executor: ExecutorSettings) -> str:
    """What decides a run's numbers besides the regulariser and its strength: seeds, data, model, training settings,
    device and formats, and on a CPU the torch threads a run computes with (they move the last bits), whichever
    executor runs it."""
    made = {
        "seeds": study.seeds,
        "data": study.data.model_dump(),
        "model": study.model.model_dump(),
        "train": study.train.model_dump(),
        "device": formats.device.type,
        "formats": formats.describe(),
    }
    if formats.device.type == "cpu":
        made["threads"] = executor.cpus_per_run
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]


def reuse_grid(
    args: argparse.Namespace, regularizer: str, strength: float, wanted: str
) -> tuple[str | None, list[RunResult], dict] | None:
    """The regulariser's grid runs of strength λ (its MLflow run id, the runs, how they were made), if that grid
    trained λ with the same settings on the same kind of device."""
    if args.grids is None:
        raise StageError("the headline run takes the grids' folder: give --grids (see dvc.yaml)")
    folder, made_by = RunFolder(args.grids / regularizer), f"train_cifar10@{regularizer}"
    record = read_json(folder.record, made_by=made_by)
    if record.get("fingerprint") != wanted:
        return None
    grid = load_tensors(folder.model, made_by=made_by, required=("lambdas", "seeds", "state_dicts", "diverged_epoch"))
    picks = [i for i, member in enumerate(grid["lambdas"].tolist()) if member == strength]
    if not picks:
        return None
    history = read_table(folder.history, made_by=made_by, required=("seed", "lambda", "epoch", "diverged"))
    norms = read_table(
        folder.layer_norms, made_by=made_by, required=("seed", "lambda", "epoch", "layer", "norm", "angular_update")
    )
    results = []
    for i in picks:
        seed, diverged = int(grid["seeds"][i]), int(grid["diverged_epoch"][i])
        rows = history[(history["lambda"] == strength) & (history["seed"] == seed)].sort_values("epoch")
        layers = norms[(norms["lambda"] == strength) & (norms["seed"] == seed)]
        results.append(
            RunResult(
                regularizer=regularizer,
                strength=strength,
                seed=seed,
                history=rows.drop(
                    columns=["regularizer", "seed", "lambda", "epoch", "diverged"], errors="ignore"
                ).to_dict("records"),
                layer_norms=[
                    dict(zip(epoch["layer"], epoch["norm"])) for _, epoch in layers.groupby("epoch", sort=True)
                ],
                angular_updates=[
                    dict(zip(epoch["layer"], epoch["angular_update"]))
                    for _, epoch in layers.groupby("epoch", sort=True)
                ],
                diverged_epoch=None if diverged < 0 else diverged,
                state_dict=grid["state_dicts"][i],
            )
        )
    setup = {key: record[key] for key in ("device", "formats", "n_images", "classes", "fingerprint", "regularizer")}
    return record.get("run_id"), results, setup


def run_setup(splits: Splits, formats: Formats) -> dict:
    """How the run was made, for MLflow params and the run record the report reads: device, formats, images, classes."""
    return {
        "device": formats.device.type,
        "formats": formats.describe(),
        "n_images": {name: len(getattr(splits, name).labels) for name in SPLITS},
        "classes": list(splits.classes),
    }


def epoch_metrics(row: dict[str, float], norms: dict[str, float], angles: dict[str, float]) -> dict[str, float]:
    """One epoch as MLflow metrics: the row's numbers, each layer's ‖W‖ and its mean angular update per step
    (radians; NaN at epoch 0, before any step)."""
    return (
        {name: float(value) for name, value in row.items()}
        | {f"layer_norm.{layer}": norm for layer, norm in norms.items()}
        | {f"angular_update.{layer}": angle for layer, angle in angles.items()}
    )


def log_result(tracker: Tracker, run_id: str | None, result: RunResult, width: int, curves: bool) -> None:
    """Final values, the divergence flag and the trained weights; the per-epoch curves too when they were not
    logged live (step = epoch)."""
    series = {}
    if curves:
        epochs = [
            epoch_metrics(row, norms, angles)
            for row, norms, angles in zip(result.history, result.layer_norms, epoch_angles(result))
        ]
        series = {name: [epoch[name] for epoch in epochs] for name in epochs[0]}
    final = {f"final_{name}": float(value) for name, value in result.final.items()}
    final |= {"diverged": float(result.diverged_epoch is not None), "epochs_run": len(result.history) - 1}
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    tracker.log_history(run_id, series, final)
    if tracker.enabled and run_id is not None:
        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch) / f"model_{result.regularizer}_{result.strength:g}_seed_{result.seed}.pt"
            torch.save(model_file(result, width), weights)
            tracker.log_artifacts(run_id, [weights], folder="model")


def model_file(result: RunResult, width: int) -> dict:
    """One trained net: `ResNet(width).load_state_dict(file["state_dict"])` restores it."""
    return {
        "regularizer": result.regularizer,
        "lambda": result.strength,
        "seed": result.seed,
        "width": width,
        "state_dict": result.state_dict,
    }


def checkpoint(results: list[RunResult], width: int) -> dict:
    """Every (strength, seed)'s trained weights: `ResNet(width).load_state_dict(state_dicts[i])` for lambdas[i],
    seeds[i]."""
    return {
        "regularizer": results[0].regularizer,
        "lambdas": torch.tensor([r.strength for r in results], dtype=torch.float64),
        "seeds": torch.tensor([r.seed for r in results]),
        "width": width,
        "state_dicts": [r.state_dict for r in results],
        "diverged_epoch": torch.tensor([-1 if r.diverged_epoch is None else r.diverged_epoch for r in results]),
    }


def history_rows(results: list[RunResult]) -> list[dict]:
    """Long format, one row per (seed, strength, epoch): what seaborn reads; `diverged` marks the epoch that did."""
    return [
        {"regularizer": r.regularizer, "seed": r.seed, "lambda": r.strength, "epoch": epoch}
        | row
        | {"diverged": epoch == r.diverged_epoch}
        for r in results
        for epoch, row in enumerate(r.history)
    ]


def epoch_angles(result: RunResult) -> list[dict[str, float]]:
    """The run's angular updates per epoch; empty dicts for a run recorded before they were measured."""
    return result.angular_updates or [{} for _ in result.layer_norms]


def layer_norm_rows(results: list[RunResult], width: int) -> list[dict]:
    """Long format, one row per (seed, strength, epoch, layer): ‖W‖₂ of each conv and linear layer, its mean angular
    update per step over the epoch (radians, NaN at epoch 0) and whether a BatchNorm makes it scale-invariant."""
    with torch.device("meta"):  # the layout alone: no memory, no random draws
        invariant = scale_invariant_layers(ResNet(width))
    return [
        {
            "regularizer": r.regularizer,
            "seed": r.seed,
            "lambda": r.strength,
            "epoch": epoch,
            "layer": layer,
            "norm": norm,
            "angular_update": angles.get(layer, math.nan),
            "scale_invariant": layer in invariant,
        }
        for r in results
        for epoch, (norms, angles) in enumerate(zip(r.layer_norms, epoch_angles(r)))
        for layer, norm in norms.items()
    ]


def parser() -> argparse.ArgumentParser:
    cli = stage.training_parser(__doc__, "python -m stages.train_cifar10", "cifar10.strengths", "cifar10.wd")
    cli.add_argument(
        "--grids", type=Path, help="headline only: the grids' folder, whose runs it reuses where they hold its strength"
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
