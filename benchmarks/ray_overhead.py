"""Benchmark: what Ray costs per run, and runs per hour vs workers: the same small CIFAR-10 grid under `local`
and under `ray` on real clusters of 1 and 2 one-CPU nodes started on 127.0.0.1 (`ray start`, as tests/test_ray.py).

Run from the project root: `python -m benchmarks.ray_overhead [--runs 8] [--epochs 4] [--images 600]`.
Each run is one CPU thread in every mode (`executor.cpus_per_run: 1`), so the modes compute the same bits and
differ only in where the runs happen. The overhead per run is (Ray's wall time on one node − local's) / runs:
joining the cluster, shipping the code and the data, a worker process per node, results back to the driver.
It prints the machine first (benchmarks/machine.py) and writes its figures with it to
benchmarks/results/ray_overhead-<machine class>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import time

import torch

from benchmarks.machine import this_machine, write_result
from benchmarks.ray_cluster import NO_AUTH, ray_cluster
from wdlab.cifar10.data import Split, Splits
from wdlab.cifar10.grid import RunSpec, train_run
from wdlab.executor import Placement, run_all
from wdlab.settings import ExecutorSettings, load_settings


def standin_splits(images: int) -> Splits:
    """Random uint8 images and labels in the real shapes: the benchmark times the machinery, not learning."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(
            torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
            torch.randint(0, 10, (n,), generator=gen),
        )

    return Splits(split(images), split(images // 5), split(images // 5), tuple(str(c) for c in range(10)))


def time_grid(specs: list[RunSpec], splits: Splits, executor: ExecutorSettings) -> tuple[float, float, set[str]]:
    """Wall seconds for the whole grid, the runs' own seconds on their workers, and the nodes they ran on."""
    worker_seconds, nodes = [], set()

    def finish(spec: RunSpec, result: object, placement: Placement) -> None:
        worker_seconds.append(placement.seconds)
        nodes.add(placement.node)

    start = time.perf_counter()
    run_all(specs, train_run, splits, executor, lambda spec: contextlib.nullcontext(), finish)
    return time.perf_counter() - start, sum(worker_seconds), nodes


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--runs", type=int, default=8, help="runs in the grid (λ × seeds)")
    cli.add_argument("--epochs", type=int, default=4)
    cli.add_argument("--images", type=int, default=600, help="training images (validation and test: a fifth each)")
    args = cli.parse_args()

    machine = this_machine()
    print(machine.describe())
    raw = load_settings().model_dump()
    raw["cifar10"]["model"]["width"] = 8
    raw["cifar10"]["train"] |= {"epochs": args.epochs, "batch_size": 50, "mixed_precision": False}
    raw["cifar10"]["data"]["curve_subset"] = 0
    study = type(load_settings()).model_validate(raw).cifar10
    seeds = range((args.runs + 1) // 2)
    specs = [
        RunSpec(study, strength, seed, "cpu")
        for strength, seed in itertools.islice(itertools.product((0.0, 5e-4), seeds), args.runs)
    ]
    splits = standin_splits(args.images)
    print(
        f"{len(specs)} runs: width 8, {args.epochs} epochs, {args.images} training images, 1 CPU thread each",
        flush=True,
    )

    os.environ.update(NO_AUTH)  # the benchmark's clusters run without token authentication (benchmarks/ray_cluster.py)
    rows = []
    local_wall, local_work, _ = time_grid(specs, splits, ExecutorSettings(kind="local", cpus_per_run=1))
    rows.append(("local", 1, local_wall, local_work))
    for nodes in (1, 2):
        with ray_cluster(workers=nodes - 1) as cluster:
            wall, work, used = time_grid(
                specs, splits, ExecutorSettings(kind="ray", address=cluster.address, cpus_per_run=1)
            )
        assert len(used) == nodes, f"runs landed on {len(used)} of {nodes} nodes"
        rows.append(("ray", nodes, wall, work))

    print(
        "\n| executor | workers (1-CPU nodes) | wall s | runs/hour "
        "| mean s on a worker per run | overhead per run vs local |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for kind, workers, wall, work in rows:
        overhead = "" if kind == "local" else f"{(wall * workers - local_wall) / len(specs):+.2f} s"
        print(
            f"| {kind} | {workers} | {wall:.1f} | {3600 * len(specs) / wall:.0f} "
            f"| {work / len(specs):.2f} | {overhead} |"
        )
    print("\noverhead per run: (wall × workers − local wall) / runs, i.e. the CPU-seconds Ray adds to each run")
    figures = {
        "runs": len(specs),
        "epochs": args.epochs,
        "images": args.images,
        "load_after": round(os.getloadavg()[0], 2),
    }
    for kind, workers, wall, work in rows:
        figures[f"{kind}_{workers}_node{'s' if workers > 1 else ''}"] = {
            "wall_s": round(wall, 1),
            "runs_per_hour": round(3600 * len(specs) / wall),
            "worker_s_per_run": round(work / len(specs), 2),
        } | ({} if kind == "local" else {"overhead_s_per_run": round((wall * workers - local_wall) / len(specs), 2)})
    print(f"written: {write_result('ray_overhead', machine, figures)}")


if __name__ == "__main__":
    main()
