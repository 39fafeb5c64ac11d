"""The GPU path in one command: the machine, the study's epoch time and FLOP rate, same-seed reruns, memory, wall time.

What a GPU user needs before trusting the GPU recipe (docs/cifar10.md), measured on a generated full-size dataset in
memory (50,000 + 10,000 random uint8 images: random pixels cost exactly what real ones cost), printed and, with
--out, written as JSON:

  machine     GPU, CUDA and cuDNN versions, torch, CPU model, date, git revision
  peak        a large matmul in the trainer's precision, timed here: what this GPU reaches at best
  recipe      one epoch of the GPU preset of docs/cifar10.md (all images, width 64, augmentation, batch 256):
              seconds, images/s, TFLOP/s (FlopCounterMode's count); and the same pass with torch's nondeterministic
              defaults, the price of `cifar10.train.deterministic`
  airbench    an epoch at airbench94's size (width 64, its batch of 1,024, all 50,000 images) against airbench94's
              A100 epoch scaled to this GPU by matmul throughput
  same_seed   two short runs with one seed through the stages' own entry (wdlab.cifar10.grid.train_run): identical?
  memory      one run's peak memory, and how many fit side by side in the GPU's memory (executor.gpus_per_run)
  study       the full study's expected wall time: runs × epochs × seconds per epoch

It needs torch, torchvision, pydantic and tqdm besides this package (no DVC, MLflow or Ray), so a bare GPU machine
runs it; on an H100 or H200 it takes a few minutes. It writes the report, less the machine, as figures with the
machine to benchmarks/results/gpu_check-<machine class>.json (benchmarks/machine.py). `--device cpu --tiny` runs
the same code on a tiny configuration in seconds (the tests do), so it cannot rot where no GPU is; its numbers mean
nothing, so it writes no results file.

    python -m benchmarks.gpu_check --out gpu_check.json
    python -m benchmarks.gpu_check --device cpu --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.cifar_throughput import dtype_name, flops_per_image, gflops, sync
from benchmarks.machine import Machine, this_machine, write_result
from wdlab.cifar10.archive import Cifar10
from wdlab.cifar10.data import Split, Splits, curve_subsets, cut_splits
from wdlab.cifar10.grid import RunSpec, train_run
from wdlab.cifar10.training import RunResult, Trainer, measure
from wdlab.device import Formats, device_formats, pick_device, set_cuda_determinism
from wdlab.settings import REGULARIZERS, ImageStudy

# params.yaml's cifar10 section with the GPU preset of docs/cifar10.md (every training image, width 64, 30 epochs of
# batch 256, augmentation, curves on 2,000 images, the full strength grids). Written out because reading params.yaml
# needs the pipeline's YAML parser; a test keeps the two equal.
TRAIN = {
    "lr": 0.1,
    "adamw_lr": 2.0e-3,
    "momentum": 0.9,
    "nesterov": True,
    "epochs": 30,
    "batch_size": 256,
    "schedule": "onecycle",
    "warmup_fraction": 0.2,
    "label_smoothing": 0.0,
    "decay_norm_and_bias": False,
    "mixed_precision": True,
    "deterministic": True,
}
RECIPE = {
    "dataset": "cifar10",
    "seeds": [0, 1, 2],
    "regularizer": "l2",
    "wd": 5.0e-4,
    "download": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
    },
    "data": {"split_seed": 0, "train_subset": 0, "valid_size": 2000, "curve_subset": 2000, "augment": True},
    "model": {"width": 64},
    "train": TRAIN,
    "strengths": {
        "l2": [0, 1.0e-4, 5.0e-4, 1.0e-3, 3.0e-3, 1.0e-2],
        "decoupled": [0, 0.05, 0.2, 0.5],
        "l1": [1.0e-4, 1.0e-3],
        "dropout": [0.2, 0.5],
        "noise": [0.5],  # params.yaml's: the preset leaves it
    },
    "plain": {  # the reference's plain CNN at its own size, 64 channels; otherwise params.yaml's
        "model": {"channels": 64, "hidden": 128},
        "train": TRAIN | {"lr": 0.01, "epochs": 10, "batch_size": 64},  # the reference's lr, epochs and batch
        "l2": [0, 5.0e-3, 5.0e-2],
    },
}

# airbench94 (github.com/KellerJordan/cifar10-airbench): 94.01 % in 3.83 s for 9.9 epochs of 50,000 images at batch
# 1,024 on one A100-SXM4-80GB (torch 2.1, no torch.compile), 0.36 PFLOP in all by its own count.
AIRBENCH94_SECONDS, AIRBENCH94_EPOCHS, AIRBENCH94_BATCH = 3.83, 9.9, 1024
A100_BF16_TFLOPS = 312.0  # the A100's dense bf16 datasheet peak: the yardstick airbench94's time is scaled by


@dataclass(frozen=True)
class Scale:
    """How big the check is: the real one for a GPU, or a tiny one that runs the same code on a CPU in seconds."""

    n_train: int  # generated training images (CIFAR-10: 50,000)
    n_test: int
    overrides: dict[str, dict[str, Any]]  # on top of RECIPE, section by section
    airbench_batch: int
    same_seed_subset: int  # training images of the two same-seed runs (0 = all)
    same_seed_epochs: int
    matmul: int  # side of the square matmul that measures the peak
    repeats: int  # timed passes; the best counts


FULL = Scale(50_000, 10_000, {}, AIRBENCH94_BATCH, same_seed_subset=5_000, same_seed_epochs=2, matmul=8192, repeats=2)
TINY = Scale(
    300,
    100,
    {"data": {"valid_size": 50, "curve_subset": 50}, "model": {"width": 4}, "train": {"batch_size": 25}},
    airbench_batch=50,
    same_seed_subset=0,
    same_seed_epochs=1,
    matmul=128,
    repeats=1,
)


def recipe(scale: Scale) -> ImageStudy:
    """The GPU preset, with the scale's overrides."""
    raw = {key: value | scale.overrides[key] if key in scale.overrides else value for key, value in RECIPE.items()}
    return ImageStudy.model_validate(raw)


def with_values(study: ImageStudy, section: str, **values: Any) -> ImageStudy:
    return study.model_copy(update={section: getattr(study, section).model_copy(update=values)})


# ── the machine ───────────────────────────────────────────────────────────────────────────────────


def machine(device: torch.device, described: Machine) -> dict[str, Any]:
    """What the numbers were measured on: benchmarks.machine's description, with the device's details."""
    return dataclasses.asdict(described) | device_details(device)


def device_details(device: torch.device) -> dict[str, Any]:
    """The device the check ran on, and its CUDA details where they apply."""
    info: dict[str, Any] = {"device": device.type}
    if device.type == "cuda":
        gpu = torch.cuda.get_device_properties(device)
        info |= {
            "gpu_memory_gib": gpu.total_memory / 2**30,
            "multiprocessors": gpu.multi_processor_count,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


# ── data and timing ───────────────────────────────────────────────────────────────────────────────


def generated_dataset(n_train: int, n_test: int, seed: int = 0) -> Cifar10:
    """Random uint8 images and labels in the download stage's format: what real ones cost, nothing to download."""
    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=gen)

    return Cifar10(
        images(n_train), labels(n_train), images(n_test), labels(n_test), tuple(f"class {i}" for i in range(10))
    )


def seconds(work: Callable[[], Any]) -> float:
    sync()
    start = time.perf_counter()
    work()
    sync()
    return time.perf_counter() - start


def epoch_rate(study: ImageStudy, train: Split, formats: Formats, repeats: int) -> tuple[Trainer, dict[str, float]]:
    """Training passes over `train` (on the device) after a warm-up one: the best pass's seconds, images/s, FLOPs.

    FLOPs are FlopCounterMode's count of one step (convolutions and matmuls, forward and backward); BatchNorm,
    pooling and the optimizer are memory traffic it does not count.
    """
    trainer = Trainer.create(study, study.regularizer, study.wd, study.seeds[0], formats, n_train=len(train.labels))
    trainer.train_epoch(train)  # warm-up: cuDNN's algorithm choice, the allocator's first blocks
    best = min(seconds(lambda: trainer.train_epoch(train)) for _ in range(repeats))
    batch = Split(train.images[: study.train.batch_size], train.labels[: study.train.batch_size])
    per_image = flops_per_image(
        Trainer.create(study, study.regularizer, study.wd, study.seeds[0], formats, len(batch.labels)), batch
    )
    images = (len(train.labels) // study.train.batch_size) * study.train.batch_size  # a pass drops the partial batch
    rate = images / best
    return trainer, {
        "images": images,
        "train_seconds": best,
        "images_per_s": rate,
        "gflop_per_image": per_image / 1e9,
        "tflops": rate * per_image / 1e12,
    }


def configuration(study: ImageStudy, n_train: int, formats: Formats) -> dict[str, Any]:
    return {
        "width": study.model.width,
        "batch_size": study.train.batch_size,
        "train_images": n_train,
        "augment": study.data.augment,
        "formats": formats.describe(),
        "deterministic": study.train.deterministic,
    }


# ── the sections ──────────────────────────────────────────────────────────────────────────────────


def recipe_epoch(
    study: ImageStudy, splits: Splits, formats: Formats, repeats: int, peak_tflops: float
) -> tuple[dict, dict | None]:
    """One epoch of the recipe: its training pass, deterministic and with torch's defaults, and the per-epoch curves
    (eval mode on `curve_subset` images of each split); and the memory the run held at its peak (CUDA)."""
    device = formats.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer, rate = epoch_rate(study, splits.train, formats, repeats)
    curves = curve_subsets(splits, study.data.curve_subset, study.data.split_seed)
    curve_seconds = min(seconds(lambda: measure(trainer.model, curves, formats)) for _ in range(repeats))
    memory = run_memory(device) if device.type == "cuda" else None
    set_cuda_determinism(device, False)
    try:
        default_seconds = min(seconds(lambda: trainer.train_epoch(splits.train)) for _ in range(repeats))
    finally:
        set_cuda_determinism(device, study.train.deterministic)
    return {
        "configuration": configuration(study, len(splits.train.labels), formats),
        **rate,
        "percent_of_matmul_peak": 100 * rate["tflops"] / peak_tflops,
        "curve_seconds": curve_seconds,
        "seconds_per_epoch": rate["train_seconds"] + curve_seconds,
        "nondeterministic_train_seconds": default_seconds,
        "determinism_cost_percent": 100 * (rate["train_seconds"] / default_seconds - 1),
    }, memory


def run_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of the run so far, and how many such runs fit in the GPU's memory side by side.

    A run's process holds its CUDA context, the dataset and the allocator's cache besides the tensors themselves:
    what the GPU reports in use (this process alone on it) is that whole footprint.
    """
    free, total = torch.cuda.mem_get_info(device)
    process = total - free
    fit = max(1, total // process)
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        "process_gib": process / 2**30,
        "gpu_gib": total / 2**30,
        "runs_fit": fit,
        "gpus_per_run": math.floor(1e4 / fit) / 1e4,  # Ray's fractions have 4 decimals; rounded down so `fit` runs fit
    }


def airbench_epoch(
    study: ImageStudy, data: Cifar10, batch: int, formats: Formats, repeats: int, peak_tflops: float
) -> dict:
    """An epoch at airbench94's size: every training image, width 64, its batch; and airbench94's A100 epoch,
    scaled to this GPU by how much faster its bf16 matmul is than the A100's datasheet peak."""
    study = with_values(study, "train", batch_size=batch)
    train = Split(data.train_images, data.train_labels).to(formats.device)
    _, rate = epoch_rate(study, train, formats, repeats)
    scale = peak_tflops / A100_BF16_TFLOPS
    airbench_seconds = AIRBENCH94_SECONDS / AIRBENCH94_EPOCHS / scale
    return {
        "configuration": configuration(study, len(train.labels), formats),
        **rate,
        "percent_of_matmul_peak": 100 * rate["tflops"] / peak_tflops,
        "airbench94_a100_seconds_per_epoch": AIRBENCH94_SECONDS / AIRBENCH94_EPOCHS,
        "gpu_vs_a100": scale,
        "airbench94_seconds_per_epoch_here": airbench_seconds,
        "ratio_to_airbench94": rate["train_seconds"] / airbench_seconds,
    }


def same_seed(study: ImageStudy, data: Cifar10, scale: Scale, device: torch.device) -> dict:
    """Two short runs of one spec through the function every executor trains with: identical, or how far apart."""
    study = with_values(
        with_values(study, "data", train_subset=scale.same_seed_subset), "train", epochs=scale.same_seed_epochs
    )
    splits = cut_splits(data, study.data)
    spec = RunSpec(study, study.regularizer, study.wd, study.seeds[0], device.type)
    first, second = train_run(spec, splits), train_run(spec, splits)
    difference = largest_difference(first, second)
    return {
        "epochs": scale.same_seed_epochs,
        "train_images": len(splits.train.labels),
        "identical": difference == 0.0,
        "max_difference": difference,
    }


def largest_difference(first: RunResult, second: RunResult) -> float:
    """The largest absolute difference between two runs' per-epoch metrics and trained weights (inf if their
    histories differ in length; equal NaNs, like epoch 0's training-pass loss, count as equal)."""
    if len(first.history) != len(second.history):
        return math.inf
    metrics = [
        abs(a[key] - b[key])
        for a, b in zip(first.history, second.history)
        for key in a
        if not (math.isnan(a[key]) and math.isnan(b[key]))
    ]
    weights = [
        (value.double() - second.state_dict[name].double()).abs().max().item()
        for name, value in first.state_dict.items()
    ]
    return max(metrics + weights)


def study_time(study: ImageStudy, seconds_per_epoch: float) -> dict:
    """The full study on one GPU, one run after another: every strength of every regulariser on every seed (the
    headline run is the grid's), each `epochs` epochs long."""
    runs = len(study.seeds) * sum(len(study.strengths.of(regularizer)) for regularizer in REGULARIZERS)
    total = runs * study.train.epochs * seconds_per_epoch
    return {
        "runs": runs,
        "epochs": study.train.epochs,
        "seconds_per_epoch": seconds_per_epoch,
        "hours": total / 3600,
        "formula": f"{runs} runs × {study.train.epochs} epochs × {seconds_per_epoch:.2f} s = {total / 3600:.2f} h",
    }


# ── the command ───────────────────────────────────────────────────────────────────────────────────


def check(device: torch.device, scale: Scale, described: Machine) -> dict[str, Any]:
    study = recipe(scale)
    set_cuda_determinism(
        device, study.train.deterministic
    )  # first: cuBLAS takes its workspace settings at the first matmul
    formats = device_formats(device, study.train.mixed_precision)
    report: dict[str, Any] = {"machine": machine(device, described)}
    dtype = formats.autocast_dtype or torch.float32
    a, b = (torch.randn(scale.matmul, scale.matmul, dtype=dtype, device=device) for _ in range(2))
    # ruff takes `del a, b` below for an unbinding before the lambda runs; it runs inside gflops, before the del
    peak = gflops(lambda: a @ b, repeats=10) / 1e3  # noqa: F821
    del a, b
    report["peak"] = {"kernel": f"{scale.matmul}² {dtype_name(dtype)} matmul", "tflops": peak}
    data = generated_dataset(scale.n_train, scale.n_test)
    splits = cut_splits(data, study.data).to(device)
    report["recipe"], report["memory"] = recipe_epoch(study, splits, formats, scale.repeats, peak)
    del splits
    report["airbench"] = airbench_epoch(study, data, scale.airbench_batch, formats, scale.repeats, peak)
    report["same_seed"] = same_seed(study, data, scale, device)
    report["study"] = study_time(study, report["recipe"]["seconds_per_epoch"])
    return report


def summary(report: dict[str, Any]) -> str:
    m, peak, r, a, s, mem, t = (
        report[k] for k in ("machine", "peak", "recipe", "airbench", "same_seed", "memory", "study")
    )
    cuda = m["device"] == "cuda"
    where = (
        f"{m['gpu']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}"
        if cuda
        else f"{m['device']}, torch threads: {m['torch_threads']}"
    )
    lines = [
        f"machine    {where}; torch {m['torch']}; {m['cpu']}; {m['date']}; revision {m['revision']}",
        f"peak       {peak['kernel']}: {peak['tflops']:.3g} TFLOP/s",
    ]
    for name, section in (("recipe", r), ("airbench", a)):
        c = section["configuration"]
        lines.append(
            f"{name:<10} width {c['width']}, batch {c['batch_size']}, {c['train_images']} images, {c['formats']}: "
            f"{section['train_seconds']:.2f} s per training pass, {section['images_per_s']:.0f} images/s, "
            f"{section['gflop_per_image']:.3g} GFLOP per image = {section['tflops']:.3g} TFLOP/s "
            f"({section['percent_of_matmul_peak']:.0f} % of the matmul)"
        )
    lines += [
        f"           recipe epoch with its curves: {r['seconds_per_epoch']:.2f} s; "
        f"training pass with torch's nondeterministic defaults {r['nondeterministic_train_seconds']:.2f} s "
        f"(determinism costs {r['determinism_cost_percent']:+.0f} %"
        + ("" if cuda else ": noise, the switches act on CUDA only")
        + ")",
        f"           airbench94: {a['airbench94_a100_seconds_per_epoch']:.3f} s per epoch on an A100, "
        f"{a['airbench94_seconds_per_epoch_here']:.3g} s scaled to this device "
        f"({a['gpu_vs_a100']:.3g}× the A100's bf16 peak); "
        f"this epoch takes {a['ratio_to_airbench94']:.3g}× that",
        f"same seed  two runs of {s['epochs']} epoch(s) on {s['train_images']} images: "
        + ("identical" if s["identical"] else f"different (largest difference {s['max_difference']:.3g})"),
        f"memory     peak {mem['peak_allocated_gib']:.2f} GiB allocated, "
        f"{mem['process_gib']:.2f} GiB for the process of {mem['gpu_gib']:.0f} GiB: "
        f"{mem['runs_fit']} runs fit side by side (executor.gpus_per_run: {mem['gpus_per_run']:g})"
        if mem
        else "memory     (CUDA only)",
        f"study      {t['formula']} on one device, one run after another",
    ]
    return "\n".join(lines)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="as `device` in params.yaml"
    )
    cli.add_argument(
        "--tiny", action="store_true", help="a tiny configuration: the same code in seconds, numbers meaningless"
    )
    cli.add_argument("--out", type=Path, help="also write the report here as JSON")
    args = cli.parse_args()
    device, described = pick_device(args.device), this_machine()
    report = check(device, TINY if args.tiny else FULL, described)
    print(summary(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.tiny:  # a tiny check's numbers only show the form: nothing to keep
        figures = {section: values for section, values in report.items() if section != "machine"}
        print(f"written: {write_result('gpu_check', described, figures, details=device_details(device))}")


if __name__ == "__main__":
    main()
