"""Benchmark: training the whole λ grid as one batched tensor program vs one training loop per λ.

Run from the project root: `python -m benchmarks.synthetic_grid [--repeats 5] [--grid-size 10]`. It prints the
machine first (benchmarks/machine.py) and writes its figures with it to
benchmarks/results/synthetic_grid-<machine class>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.machine import this_machine, write_result
from wdlab.device import pick_device
from wdlab.settings import load_settings
from wdlab.synthetic.data import Split, make_dataset
from wdlab.synthetic.training import train_grid


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--repeats", type=int, default=5)
    cli.add_argument("--grid-size", type=int, default=0, help="λ values (0 = the grid in params.yaml)")
    cli.add_argument("--device", default=None, help="default: params.yaml's device")
    args = cli.parse_args()

    machine = this_machine()
    print(machine.describe())
    settings = load_settings()
    spec, seeds = settings.synthetic.train, settings.synthetic.seeds
    strengths = settings.synthetic.strength_grid
    if args.grid_size:
        strengths = tuple(torch.logspace(-2, 2, args.grid_size - 1).tolist()) + (0.0,)
    device = pick_device(args.device or settings.device)
    data = make_dataset(settings.synthetic.data, seeds)
    train = Split(data["x_train"], data["y_train"])
    test = {"test": Split(data["x_test"], data["y_test"])}

    def all_at_once() -> None:
        train_grid(train, strengths, spec, seeds, device, test, progress=False)

    def one_seed() -> None:  # the study before seeds became an axis: one seed, the λ grid batched
        train_grid(train.seed(0), strengths, spec, seeds[:1], device, {"test": test["test"].seed(0)}, progress=False)

    def per_run() -> None:  # the tutorial way: one training loop per (seed, λ)
        for s, seed in enumerate(seeds):
            for strength in strengths:
                train_grid(
                    train.seed(s), (strength,), spec, (seed,), device, {"test": test["test"].seed(s)}, progress=False
                )

    t_all, t_one, t_loop = (
        timed(all_at_once, args.repeats),
        timed(one_seed, args.repeats),
        timed(per_run, max(1, args.repeats // 2)),
    )
    print(
        f"device {device}, {torch.get_num_threads()} threads, {len(seeds)} seeds × {len(strengths)} λ, "
        f"{spec.epochs} epochs, "
        f"{spec.implementation} implementation, median of {args.repeats}"
    )
    print(f"all seeds × λ at once     : {t_all * 1000:8.1f} ms")
    print(f"one seed, λ batched       : {t_one * 1000:8.1f} ms   (seeds cost {t_all / t_one:.1f}× one seed)")
    print(f"one loop per (seed, λ)    : {t_loop * 1000:8.1f} ms   (batching: {t_loop / t_all:.1f}× faster)")
    figures = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seeds": len(seeds),
        "strengths": len(strengths),
        "epochs": spec.epochs,
        "implementation": spec.implementation,
        "median_of": {"batched": args.repeats, "loop_per_run": max(1, args.repeats // 2)},
        "ms": {
            "all_at_once": round(t_all * 1000, 1),
            "one_seed": round(t_one * 1000, 1),
            "loop_per_run": round(t_loop * 1000, 1),
        },
        "seeds_cost_x_one_seed": round(t_all / t_one, 2),
        "batching_x_faster": round(t_loop / t_all, 1),
        "load_after": round(os.getloadavg()[0], 2),  # the machine's load is described before the run
    }
    print(f"written: {write_result('synthetic_grid', machine, figures)}")


if __name__ == "__main__":
    main()
