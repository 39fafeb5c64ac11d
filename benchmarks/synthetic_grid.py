"""Benchmark: training the whole λ grid as one batched tensor program vs one training loop per λ.

Run from the project root: `python -m benchmarks.synthetic_grid [--repeats 5] [--grid-size 10]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

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

    settings = load_settings()
    spec = settings.synthetic.train
    lambdas = settings.synthetic.lambda_grid
    if args.grid_size:
        lambdas = tuple(torch.logspace(-2, 2, args.grid_size - 1).tolist()) + (0.0,)
    device = pick_device(args.device or settings.device)
    data = make_dataset(settings.synthetic.data, settings.seed)
    train = Split(data["x_train"], data["y_train"])
    test = {"test": Split(data["x_test"], data["y_test"])}

    def batched() -> None:
        train_grid(train, lambdas, spec, settings.seed, device, test, progress=False)

    def per_lambda() -> None:
        for lam in lambdas:
            train_grid(train, (lam,), spec, settings.seed, device, test, progress=False)

    torch.set_num_threads(torch.get_num_threads())
    t_batched, t_loop = timed(batched, args.repeats), timed(per_lambda, args.repeats)
    print(f"device {device}, {torch.get_num_threads()} threads, {len(lambdas)} λ, {spec.epochs} epochs, "
          f"{spec.implementation} implementation, median of {args.repeats}")
    print(f"batched λ grid : {t_batched * 1000:8.1f} ms")
    print(f"per-λ loop     : {t_loop * 1000:8.1f} ms")
    print(f"speed-up       : {t_loop / t_batched:8.1f}×")


if __name__ == "__main__":
    main()
