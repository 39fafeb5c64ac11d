"""Train an image study's residual net (--study: fashion_mnist, cifar10) on every seed: one regulariser's whole grid
(a run per strength of <study>.strengths.<regulariser>), or the headline run (<study>.regularizer at strength
<study>.wd), which takes that grid's runs for the strength when the grid trained them with the same settings and
trains only when it did not (`dvc exp run -S cifar10.wd=X` with X outside the grid trains just that strength).
`--architecture plain` trains the reference's plain CNN instead, over its own L2 grid (<study>.plain.l2) with its
own settings (<study>.plain), the same way."""

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
from wdlab.cifar10.grid import RunSpec, as_record, epoch_metrics, from_record, train_run
from wdlab.cifar10.model import ARCHITECTURES, make_net, net_shape, scale_invariant_layers
from wdlab.cifar10.training import RunResult
from wdlab.datasets import registry
from wdlab.device import Formats, device_formats, pick_device
from wdlab.errors import StageError
from wdlab.executor import Live, Placement, check_address, check_device, run_all
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
from wdlab.lineage import DatasetInput, image_datasets
from wdlab.results import flatten, seed_aggregates
from wdlab.runcache import RunCache
from wdlab.settings import ExecutorSettings, ImageStudy, Settings
from wdlab.tracking import Tracker, member_params, strength_params, strength_run_name, training_run_name

log = logging.getLogger("wd-lab.train_images")


def main(settings: Settings, args: argparse.Namespace) -> None:
    architecture = args.architecture
    study, seeds = settings.study(args.study).for_architecture(architecture), settings.study(args.study).seeds
    regularizer = study.regularizer if args.run == "headline" else args.run
    strengths = grid_strengths(study, args.run, architecture)
    formats = device_formats(pick_device(settings.device), study.train.mixed_precision)
    if args.run != "headline":  # a grid always trains: a cluster that is not there fails first, in seconds
        check_executor(settings.executor, formats)
    shape = net_shape(study, architecture) | registry.stored(args.data).net_inputs()  # sized by the data
    tracker = Tracker(settings.tracking, settings.tracking.experiment(args.study))  # fails fast, before training
    made_as = fingerprint(study, formats, settings.executor, shape)
    reused = reuse_grid(args, regularizer, study.wd, made_as) if args.run == "headline" else None
    if reused:
        grid_record, results, setup = reused
        grid_run_id = tracker.find_run(grid_record)
        log.info(
            "%s %g was trained by its grid with these settings: its %d runs are the headline's, none retrained",
            regularizer,
            study.wd,
            len(seeds),
        )
    else:
        if args.run == "headline":  # only now does it train
            check_executor(settings.executor, formats)
        splits = load_splits(args.data, study.data)
        setup = run_setup(splits, formats) | {"fingerprint": made_as, "regularizer": regularizer}
        if architecture != "resnet":
            setup["architecture"] = architecture
        cache = RunCache(f"{stage_name(architecture)}-{args.study}-{args.run}", made_as)
    params = (
        {"seeds": len(seeds)}
        | flatten({k: setup[k] for k in ("device", "formats", "n_images")})
        | flatten({"data": study.data.model_dump(), "model": shape, "train": study.train.model_dump()})
    )
    data = (  # what every run reads, digested once: a reused grid's splits are loaded for this alone
        image_datasets(args.data, study, load_splits(args.data, study.data) if reused else splits)
        if tracker.enabled
        else []
    )

    role = f"{args.study}-headline" if args.run == "headline" else "-".join((args.study, *named(architecture), "grid"))
    with (
        tracker.run(
            " ".join((*named(architecture), training_run_name(args.run, regularizer, strengths))),
            params | strength_params(regularizer, strengths),
            role,
            tags={"wd_lab.reused_from": str(grid_run_id)} if reused else None,
            datasets=data,
        ) as run_id,
        per_strength_runs(tracker, args.run, regularizer, strengths, params, role, data) as strength_runs,
    ):
        if reused:
            for result in results:
                with member_run(tracker, result, params, role, data, strength_runs) as member:
                    log_result(tracker, member, result, shape)
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
                RunSpec(study, regularizer, strength, seed, formats.device.type, architecture)
                for strength, seed in itertools.product(strengths, seeds)
            ]
            results = train_all(splits, specs, settings.executor, cache, tracker, params, role, data, strength_runs)
        for strength in strengths:
            summary = seed_aggregates([result.final for result in results if result.strength == strength])
            tracker.log_history(strength_runs.get(strength) or run_id, {}, summary)

    with atomic_dir(args.out) as tmp:  # the folder appears whole, or not at all
        folder = RunFolder(tmp)
        model_md5 = save_tensors(folder.model, checkpoint(results, shape))
        # where each run trained (Ray node, host, seconds) is in its MLflow tags: here it would change the hash
        record = tracker.run_record(run_id, dvc_stage(args.study, architecture, args.run), args.out, model_md5)
        write_json(folder.record, record | setup)
        write_csv(folder.history, history_rows(results))
        write_csv(folder.layer_norms, layer_norm_rows(results, shape))
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


def grid_strengths(study: ImageStudy, run: str, architecture: str) -> tuple[float, ...]:
    """The strengths this stage trains: the headline's one, the regulariser's grid, or the plain CNN's L2 grid."""
    if architecture == "resnet":
        return (study.wd,) if run == "headline" else study.strengths.of(run)
    if run != "l2":
        raise StageError(
            f"the {architecture} CNN trains an L2 grid only (<study>.{architecture}.l2), not {run}: "
            f"run `python -m stages.train_images l2 --architecture {architecture}`"
        )
    return study.plain.l2


def named(architecture: str) -> tuple[str, ...]:
    """What names a net other than the ResNet in stage, role and run names (`plain`); the ResNet's stay as they were."""
    return () if architecture == "resnet" else (architecture,)


def dvc_stage(study: str, architecture: str, run: str) -> str:
    """This run's stage in dvc.yaml: headline_images@<study>, train_images@<study>-<regulariser>, or
    train_images_plain@<study>."""
    if run == "headline":
        return stage.image_stage("headline_images", study)
    if architecture == "resnet":
        return stage.image_stage("train_images", study, run)
    return stage.image_stage(stage_name(architecture), study)


def stage_name(architecture: str) -> str:
    """The training stage of `architecture` in dvc.yaml: train_images (per regulariser), train_images_plain."""
    return "_".join(("train_images", *named(architecture)))


def per_strength_runs(
    tracker: Tracker,
    run: str,
    regularizer: str,
    strengths: tuple[float, ...],
    params: dict,
    role: str,
    datasets: list[DatasetInput],
) -> contextlib.AbstractContextManager[dict[float, str | None]]:
    """A grid's top-level run per strength, each seed's run to nest under (the UI then compares strengths without
    expanding a run); none for the headline run, which is its one strength's run itself."""
    if run == "headline":
        return contextlib.nullcontext({})
    net = params.get("model.architecture")  # net_shape's: absent for the ResNet
    return tracker.strength_runs(
        regularizer,
        strengths,
        params,
        f"{role}-strength",
        lambda strength: " ".join(filter(None, (net, strength_run_name(regularizer, strength, params["seeds"])))),
        charts=("test_accuracy_mean", "gap_accuracy_mean", "w_norm_mean"),
        datasets=datasets,
    )


def train_all(
    splits: Splits,
    specs: list[RunSpec],
    executor: ExecutorSettings,
    cache: RunCache,
    tracker: Tracker,
    params: dict,
    role: str,
    datasets: list[DatasetInput],
    strength_runs: dict[float, str | None],
) -> list[RunResult]:
    """Every run of `specs`, each its own MLflow run nested under its strength's (`strength_runs`, else the stage's),
    in the order of `specs`.

    Runs a failed earlier attempt finished come from the run cache; the executor trains the rest. A run's curves
    reach MLflow as its epochs end: under `local` from this process; under `ray` from the worker when the store is a
    tracking server, else sent back to this process, which logs them. Only this process writes the outputs.
    """
    shape = net_shape(specs[0].study, specs[0].architecture)
    results: dict[str, RunResult] = {}
    members: dict[str, str | None] = {}  # spec key → its MLflow run, while it is open
    for spec in specs:
        if (record := cache.load(spec.key)) is not None:
            results[spec.key] = from_record(record)
            with member_run(tracker, results[spec.key], params, role, datasets, strength_runs) as member:
                tracker.set_tags(member, {"wd_lab.resumed": "true"})
                log_result(tracker, member, results[spec.key], shape)
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
            datasets,
            strength_runs,
            system_metrics=executor.kind == "local",
        ) as member:
            members[spec.key] = member

            def live(epoch: int, row: dict[str, float], norms: dict[str, float], angles: dict[str, float]) -> None:
                tracker.log_epoch(member, epoch_metrics(row, norms, angles), epoch)

            remote = tracker.worker_log(member, epoch_metrics) if executor.kind == "ray" else None
            yield Live(live, remote) if member is not None else None  # None: tracking is off

    def finish(spec: RunSpec, result: RunResult, placement: Placement) -> None:
        cache.save(spec.key, as_record(result))  # first: a failure from here on never costs this run again
        tracker.set_tags(members[spec.key], placement.as_tags())
        log_result(tracker, members[spec.key], result, shape, live_epochs=placement.live_epochs)
        results[spec.key] = result

    run_all([spec for spec in specs if spec.key not in results], train_run, splits, executor, open_run, finish)
    return [results[spec.key] for spec in specs]


def member_run(
    tracker: Tracker,
    run: RunResult,
    params: dict,
    role: str,
    datasets: list[DatasetInput],
    strength_runs: dict[float, str | None],
    **options: bool,
) -> contextlib.AbstractContextManager:
    """The MLflow run of one (regulariser, strength, seed), nested under its strength's run (the stage's run for the
    headline), with the data it read; a net other than the ResNet names itself first ("plain l2 0.005 seed 0")."""
    net = params.get("model.architecture")  # net_shape's: absent for the ResNet
    return tracker.run(
        " ".join(filter(None, (net, f"{run.regularizer} {run.strength:g} seed {run.seed}"))),
        params | member_params(run.regularizer, run.strength, run.seed),
        f"{role}-member",
        nested=strength_runs.get(run.strength) or True,
        datasets=datasets,
        **options,
    )


def check_executor(executor: ExecutorSettings, formats: Formats) -> None:
    """Under Ray: the device it asks for and the cluster exist; a cluster that is not there fails in seconds, before
    any run starts."""
    if executor.kind == "ray":
        check_device(executor, formats.device.type)
        check_address(executor)


def fingerprint(study: ImageStudy, formats: Formats, executor: ExecutorSettings, shape: dict) -> str:
    """What decides a run's numbers besides the regulariser and its strength: seeds, data, the net (`shape`:
    net_shape's), training settings, device and formats, and on a CPU the torch threads a run computes with (they
    move the last bits), whichever executor runs it."""
    made = {
        "seeds": study.seeds,
        "data": study.data.model_dump(),
        "model": shape,
        "train": study.train.model_dump(),
        "device": formats.device.type,
        "formats": formats.describe(),
    }
    if formats.device.type == "cpu":
        made["threads"] = executor.cpus_per_run
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]


def reuse_grid(
    args: argparse.Namespace, regularizer: str, strength: float, wanted: str
) -> tuple[dict, list[RunResult], dict] | None:
    """The regulariser's grid runs of strength λ (the grid's run record, the runs, how they were made), if that grid
    trained λ with the same settings on the same kind of device."""
    if args.grids is None:
        raise StageError("the headline run takes the grids' folder: give --grids (see dvc.yaml)")
    folder, made_by = RunFolder(args.grids / regularizer), stage.image_stage("train_images", args.study, regularizer)
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
    return record, results, setup


def run_setup(splits: Splits, formats: Formats) -> dict:
    """How the run was made, for MLflow params and the run record the report reads: device, formats, images, classes."""
    return {
        "device": formats.device.type,
        "formats": formats.describe(),
        "n_images": {name: len(getattr(splits, name).labels) for name in SPLITS},
        "classes": list(splits.classes),
    }


def log_result(tracker: Tracker, run_id: str | None, result: RunResult, shape: dict, live_epochs: int = 0) -> None:
    """Final values, the divergence flag and the trained weights; the per-epoch curves (step = epoch) from the first
    epoch not logged live, `live_epochs`."""
    epochs = [
        epoch_metrics(row, norms, angles)
        for row, norms, angles in zip(result.history, result.layer_norms, epoch_angles(result))
    ][live_epochs:]
    series = {name: [epoch[name] for epoch in epochs] for name in epochs[0]} if epochs else {}
    final = {f"final_{name}": float(value) for name, value in result.final.items()}
    final |= {"diverged": float(result.diverged_epoch is not None), "epochs_run": len(result.history) - 1}
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    tracker.log_history(run_id, series, final, first_step=live_epochs)
    if tracker.enabled and run_id is not None:
        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch) / f"model_{result.regularizer}_{result.strength:g}_seed_{result.seed}.pt"
            torch.save(model_file(result, shape), weights)
            tracker.log_artifacts(run_id, [weights], folder="model")


def model_file(result: RunResult, shape: dict) -> dict:
    """One trained net: `make_net(file).load_state_dict(file["state_dict"])` (wdlab.cifar10.model) restores it; a
    ResNet's file names its `width`, as `ResNet(width)` takes it."""
    return (
        {"regularizer": result.regularizer, "lambda": result.strength, "seed": result.seed}
        | shape
        | {"state_dict": result.state_dict}
    )


def checkpoint(results: list[RunResult], shape: dict) -> dict:
    """Every (strength, seed)'s trained weights: `make_net(file).load_state_dict(state_dicts[i])` for lambdas[i],
    seeds[i] (a ResNet's file names its `width`: `ResNet(width)`); `shape` is net_shape's."""
    return (
        {
            "regularizer": results[0].regularizer,
            "lambdas": torch.tensor([r.strength for r in results], dtype=torch.float64),
            "seeds": torch.tensor([r.seed for r in results]),
        }
        | shape
        | {
            "state_dicts": [r.state_dict for r in results],
            "diverged_epoch": torch.tensor([-1 if r.diverged_epoch is None else r.diverged_epoch for r in results]),
        }
    )


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


def layer_norm_rows(results: list[RunResult], shape: dict) -> list[dict]:
    """Long format, one row per (seed, strength, epoch, layer): ‖W‖₂ of each conv and linear layer, its mean angular
    update per step over the epoch (radians, NaN at epoch 0) and whether a BatchNorm makes it scale-invariant."""
    with torch.device("meta"):  # the layout alone: no memory, no random draws
        invariant = scale_invariant_layers(make_net(shape))
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
    cli = stage.add_study(
        stage.training_parser(__doc__, "python -m stages.train_images", "<study>.strengths", "<study>.wd")
    )
    cli.add_argument(
        "--grids", type=Path, help="headline only: the grids' folder, whose runs it reuses where they hold its strength"
    )
    cli.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default="resnet",
        help="resnet: the residual net (<study>.model, <study>.train); plain: the reference's plain CNN, its L2 grid "
        "(<study>.plain)",
    )
    return cli


if __name__ == "__main__":
    stage.run_stage(main, parser())
