"""The sweep behind the image strength grids: each regulariser trained over a wide range of strengths, at the default
params, on the full-size CIFAR-10 stand-in (the default) or on a registered dataset's real files, to choose grids from
measurements.

    python -m benchmarks.strength_sweep                     # the stand-in sweep (SWEEP below), seeds 0 and 1
    python -m benchmarks.strength_sweep --seeds 0 1 2 --only l1
    python -m benchmarks.strength_sweep --dataset fashion-mnist --net resnet plain --seeds 0 1 2 --workers 3
    # the full-data preset: every training image but the 2,000 held out for validation (58,000 of Fashion-MNIST's)
    python -m benchmarks.strength_sweep --dataset fashion-mnist --train-subset 0 --only l2 --seeds 0 \
        --net resnet plain --grid resnet=0,0.05 --grid plain=0,0.005
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python -m benchmarks.strength_sweep   # as a CPU without bf16 computes (float32)

Every run is the pipeline's own (wdlab.cifar10.grid.train_run with the settings of params.yaml's study of that
dataset, cifar10 for the stand-in: <study>.train for the ResNet, <study>.plain for the plain CNN) on the splits
wdlab.cifar10.data.cut_splits cuts by <study>.data (`--train-subset` replacing its train_subset). The
data: the generated stand-in archive (wdlab/cifar10/standin.py, the "ci" kind, 50,000 training and 10,000 test
images), or a registry dataset (wdlab/datasets/) fetched, verified, from its own mirrors or `--source`. Per net,
regulariser and strength it reports, as means over the seeds: validation accuracy (what chooses), test and train
accuracy, the fraction of conv/linear weights that are exactly zero, ‖θ‖, and the runs that diverged, with each seed's
test accuracy; per net and regulariser, the strength with the best validation accuracy, whether a larger and a
smaller strength of the sweep surround it (so the sweep brackets it), and its test-accuracy gain over λ = 0 seed by
seed with the 95 % t-interval. Each run is printed as it ends. `--workers N` trains N runs at once, each in a process
of its own with this one's thread count, so each computes the numbers it computes here. The machine comes first
(benchmarks/machine.py); the figures go to benchmarks/results/strength_sweep-<machine class>.json for the stand-in,
strength_sweep_<dataset>-<machine class>.json for a registry dataset (strength_sweep_<dataset>_<n>, n the training
images, with `--train-subset`), rewritten as each net's sweep of a regulariser ends.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.machine import this_machine, write_result  # noqa: E402
from wdlab.cifar10.archive import read_archive  # noqa: E402
from wdlab.cifar10.data import Splits, cut_splits  # noqa: E402
from wdlab.cifar10.grid import RunSpec, train_run  # noqa: E402
from wdlab.cifar10.model import ARCHITECTURES  # noqa: E402
from wdlab.cifar10.standin import build_archive  # noqa: E402
from wdlab.cifar10.summary import paired_gain  # noqa: E402
from wdlab.datasets.definition import Dataset, Resource  # noqa: E402
from wdlab.datasets.registry import REGISTRY, get  # noqa: E402
from wdlab.datasets.sources import fetch  # noqa: E402
from wdlab.errors import StageError  # noqa: E402
from wdlab.settings import IMAGE_STUDIES, ImageData, ImageStudy, Settings, load_settings  # noqa: E402

STANDIN = "cifar10-standin"  # the generated CIFAR-10 stand-in, not a registry name: CIFAR-10 can't be fetched here

# Strengths per regulariser, each from "no effect" to "too much". L2 and L1 train with SGD (cifar10.train.lr), AdamW
# with its own lr (cifar10.train.adamw_lr), so its λ is ~100× SGD's; AdamW's 0 is AdamW without decay, not l2's 0.
SWEEP: dict[str, tuple[float, ...]] = {
    "l2": (0.0, 5e-3, 5e-2, 1e-1, 2e-1, 5e-1),
    "l1": (1e-3, 3e-3, 1e-2, 3e-2),
    "decoupled": (0.0, 0.5, 2.0, 5.0, 10.0, 20.0, 50.0),
}
# The plain CNN trains with L2 alone (cifar10.plain), over a range around its grid in params.yaml.
PLAIN_SWEEP: dict[str, tuple[float, ...]] = {"l2": (0.0, 5e-3, 5e-2, 2e-1)}
# Fashion-MNIST's ResNet: L2 around the stand-in's optimum (5e-2), AdamW over the stand-in's grid.
FASHION_MNIST_SWEEP: dict[str, tuple[float, ...]] = {
    "l2": (0.0, 1e-2, 5e-2, 1e-1, 2e-1),
    "decoupled": (2.0, 10.0, 50.0),
}
SUMMARY = ("valid_accuracy", "test_accuracy", "train_accuracy", "zero_fraction", "w_norm")


def sweep_for(dataset: str, net: str) -> dict[str, tuple[float, ...]]:
    """The strengths per regulariser that `net` sweeps on `dataset` (the stand-in's for CIFAR-10)."""
    if net == "plain":
        return PLAIN_SWEEP
    return FASHION_MNIST_SWEEP if dataset == "fashion-mnist" else SWEEP


def standin_splits(scratch: Path, data: ImageData) -> Splits:
    """The full-size stand-in, cut into the splits `data` (params.yaml's cifar10.data) asks for."""
    archive = build_archive(scratch, images_per_batch=10_000, difficulty="ci")
    return cut_splits(read_archive(archive.path), data)


def dataset_splits(
    name: str,
    scratch: Path,
    data: ImageData,
    sources: Sequence[str] | None = None,
    resources: Sequence[Resource] | None = None,
) -> tuple[Dataset, Splits]:
    """The dataset called `name` (STANDIN or a registry name) and its splits by `data`. A registry dataset is fetched
    into `scratch`, verified, from `sources` (default: its own mirrors); `resources` replaces its checksums (a
    generated stand-in's)."""
    if name == STANDIN:
        return get("cifar10"), standin_splits(scratch, data)
    dataset = get(name)
    folder = fetch(dataset, scratch / dataset.name, sources, resources)
    return dataset, cut_splits(dataset.check(dataset.read(folder), where=str(folder)), data, dataset.mean, dataset.std)


def summarise(runs: list[dict]) -> dict:
    """Means over seeds of one strength's runs, the seeds' test accuracies, and how many diverged."""
    finite = [run for run in runs if not run["diverged"]]
    summary = {key: round(statistics.fmean(run[key] for run in finite), 4) if finite else None for key in SUMMARY}
    return summary | {
        "test_accuracy_by_seed": [round(run["test_accuracy"], 4) for run in runs],
        "diverged": len(runs) - len(finite),
    }


def optimum(by_strength: dict[str, dict]) -> dict:
    """The strength with the best mean validation accuracy, and whether the sweep has strengths on both sides."""
    scored = [(float(s), row["valid_accuracy"]) for s, row in by_strength.items() if row["valid_accuracy"] is not None]
    best = max(scored, key=lambda item: item[1])[0]
    strengths = sorted(float(s) for s in by_strength)
    return {"best_valid": best, "bracketed": strengths[0] < best < strengths[-1]}


def gain_over_zero(runs: list[dict], strength: float) -> dict | None:
    """Test accuracy at `strength` minus at λ = 0, seed by seed (runs carry "seed" and "lambda"): mean, std, 95 %
    t-interval (wdlab.cifar10.summary.paired_gain) and each seed's difference; None without λ = 0 or at it."""
    if strength == 0.0:
        return None
    finals = pd.DataFrame(runs)
    gain = paired_gain(finals, "test_accuracy", strength)
    if gain is None:
        return None
    wide = finals[~finals["diverged"]].pivot_table(index="seed", columns="lambda", values="test_accuracy")
    difference = (wide[strength] - wide[0.0]).dropna()
    return {key: None if value is None else round(value, 4) for key, value in gain.items()} | {
        "by_seed": {int(seed): round(float(value), 4) for seed, value in difference.items()}
    }


def specs(study: ImageStudy, net: str, regularizer: str, strengths: Sequence[float], seeds: Sequence[int]):
    """The runs of one sweep, strength by strength, seed by seed."""
    return [
        RunSpec(study, regularizer, strength, seed, "cpu", architecture=net) for strength in strengths for seed in seeds
    ]


def run_record(spec: RunSpec, splits: Splits) -> dict:
    """Train one run of the sweep (the pipeline's `train_run`), print it, and keep its last epoch's figures."""
    result = train_run(spec, splits)
    final = result.final
    print(
        f"{spec.architecture:6} {spec.regularizer:9} {spec.strength:<7g} seed {spec.seed}  "
        f"valid {final['valid_accuracy']:.4f}  test {final['test_accuracy']:.4f}  train {final['train_accuracy']:.4f}  "
        f"zeros {final['zero_fraction']:.3f}  ‖θ‖ {final['w_norm']:.1f}  ({result.seconds:.0f} s)",
        flush=True,
    )
    return {key: final[key] for key in SUMMARY} | {
        "seed": spec.seed,
        "lambda": float(spec.strength),
        "diverged": result.diverged_epoch is not None,
        "seconds": round(result.seconds),
    }


def tabulate(runs: list[dict], strengths: Sequence[float]) -> dict:
    """One sweep's runs as its table of means per strength, the validation optimum and its paired gain over λ = 0."""
    by_strength = {f"{s:g}": summarise([run for run in runs if run["lambda"] == float(s)]) for s in strengths}
    best = optimum(by_strength)
    return {"by_strength": by_strength} | best | {"test_accuracy_gain": gain_over_zero(runs, best["best_valid"])}


def sweep(
    study: ImageStudy, net: str, regularizer: str, strengths: Sequence[float], seeds: Sequence[int], splits: Splits
) -> dict:
    """Every strength on every seed, one run after another in this process (the nets sized for `splits`' images)."""
    runs = [run_record(spec, splits) for spec in specs(study, net, regularizer, strengths, seeds)]
    return tabulate(runs, strengths)


# ── runs in worker processes: each its own process, with the threads this one computes with ──────────────────────

_WORKER: dict[str, Any] = {}


def _start_worker(splits: Splits, threads: int) -> None:
    torch.set_num_threads(threads)  # the thread count moves a CPU run's last bits: the same as in this process
    _WORKER.update(splits=splits)


def _run_in_worker(spec: RunSpec) -> dict:
    return run_record(spec, _WORKER["splits"])


def result_name(dataset: str, train_images: int | None = None) -> str:
    """The results file's benchmark name: the stand-in's as before, a registry dataset's with its name in it, and
    the training images' count where `--train-subset` set it."""
    name = "strength_sweep" if dataset == STANDIN else "strength_sweep_" + dataset.replace("-", "_")
    return name if train_images is None else f"{name}_{train_images}"


def study_for(settings: Settings, dataset: str, train_subset: int | None) -> ImageStudy:
    """The image study of params.yaml that trains on `dataset` (cifar10's for the stand-in), with `train_subset`
    in place of its own where given."""
    name = "cifar10" if dataset == STANDIN else dataset
    studies = [settings.study(key) for key in IMAGE_STUDIES if settings.study(key).dataset == name]
    if not studies:
        sys.exit(f"error: no study of params.yaml trains on {name}: add a section with `dataset: {name}`")
    study = studies[0]
    if train_subset is None:
        return study
    return study.model_copy(update={"data": study.data.model_copy(update={"train_subset": train_subset})})


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument(
        "--dataset", default=STANDIN, choices=[STANDIN, *sorted(REGISTRY)], help=f"the images (default: {STANDIN})"
    )
    cli.add_argument(
        "--net", nargs="+", default=["resnet"], choices=ARCHITECTURES, help="the nets to sweep (default: resnet)"
    )
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    cli.add_argument("--only", nargs="+", choices=sorted(SWEEP), help="sweep only these regularisers")
    cli.add_argument(
        "--source", action="append", help="a folder or URL holding a registry dataset's files (default: its mirrors)"
    )
    cli.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NET=λ,…",
        help="sweep these strengths with NET, for each regulariser, in place of its grid (repeatable)",
    )
    cli.add_argument(
        "--train-subset",
        type=int,
        metavar="N",
        help="train on N images (0: every one not held out for validation) in place of <study>.data.train_subset",
    )
    cli.add_argument(
        "--workers", type=int, default=1, help="runs at once, each in its own process (default: 1, in this one)"
    )
    args = cli.parse_args()
    machine = this_machine()
    print(machine.describe(), flush=True)
    study = study_for(load_settings(ROOT / "params.yaml"), args.dataset, args.train_subset)
    with tempfile.TemporaryDirectory(prefix="wd-lab-sweep-") as scratch:
        try:
            dataset, splits = dataset_splits(args.dataset, Path(scratch), study.data, args.source)
        except StageError as err:
            sys.exit(f"error: {err}")
    figures: dict = {"dataset": args.dataset, "seeds": args.seeds, "train_images": len(splits.train.labels)}
    figures["workers"] = args.workers
    trained_on = None if args.train_subset is None else len(splits.train.labels)  # in the results file's name
    if args.grid:
        figures["grids"] = args.grid  # strengths swept in place of sweep_for's grids
    # regulariser by regulariser, each over the nets that train with it: l2 of every net comes before AdamW
    grids = {net: tuple(map(float, lams.split(","))) for net, _, lams in (grid.partition("=") for grid in args.grid)}
    blocks = [
        (net, regularizer, study.for_architecture(net), grids.get(net) or sweep_for(args.dataset, net)[regularizer])
        for regularizer in args.only or SWEEP
        for net in args.net
        if regularizer in sweep_for(args.dataset, net)
    ]
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.workers > 1:  # every run queued at once, in order; each block is tabulated as its runs are back
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    args.workers,
                    mp_context=multiprocessing.get_context("spawn"),  # a forked torch may hang in its thread pool
                    initializer=_start_worker,
                    initargs=(splits, torch.get_num_threads()),
                )
            )
            queued = [
                [pool.submit(_run_in_worker, spec) for spec in specs(trains, net, reg, lams, args.seeds)]
                for net, reg, trains, lams in blocks
            ]
            outcomes = ([future.result() for future in block] for block in queued)
        else:
            outcomes = (
                [run_record(spec, splits) for spec in specs(trains, net, reg, lams, args.seeds)]
                for net, reg, trains, lams in blocks
            )
        for (net, regularizer, trains, strengths), runs in zip(blocks, outcomes, strict=True):
            found = tabulate(runs, strengths) | {"run_seconds": [run["seconds"] for run in runs]}
            figures.setdefault(net, {"epochs": trains.train.epochs})[regularizer] = found
            print(f"{net} {regularizer}: best validation accuracy at {found['best_valid']:g}", flush=True)
            figures["seconds"] = round(time.perf_counter() - start)
            figures["load_end"] = round(os.getloadavg()[0], 2)  # times vary with the load; accuracies don't
            print(f"written: {write_result(result_name(args.dataset, trained_on), machine, figures)}", flush=True)


if __name__ == "__main__":
    main()
