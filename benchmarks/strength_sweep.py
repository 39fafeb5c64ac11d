"""The sweep behind the CIFAR-10 strength grids: each regulariser trained over a wide range of strengths, on the
full-size stand-in at the default params, to choose `cifar10.strengths` from measurements.

    python -m benchmarks.strength_sweep                     # the default sweep (SWEEP below), seeds 0 and 1
    python -m benchmarks.strength_sweep --seeds 0 1 2 --only l1
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python -m benchmarks.strength_sweep   # as a CPU without bf16 computes (float32)

Every run is the pipeline's own (wdlab.cifar10.grid.train_run with params.yaml's cifar10 settings), on the splits the
download stage would cut from the generated stand-in archive (wdlab/cifar10/standin.py, the "ci" kind, 50,000
training and 10,000 test images). Per regulariser and strength it reports, as means over the seeds: validation
accuracy (what chooses), test and train accuracy, the fraction of conv/linear weights that are exactly zero, ‖θ‖, and
the runs that diverged; per regulariser, the strength with the best validation accuracy and whether a larger and a
smaller strength of the sweep surround it (so the sweep brackets it). Each run is printed as it ends. The machine
comes first (benchmarks/machine.py); the figures go to benchmarks/results/strength_sweep-<machine class>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import this_machine, write_result  # noqa: E402
from wdlab.cifar10.archive import read_archive  # noqa: E402
from wdlab.cifar10.data import Splits, cut_splits  # noqa: E402
from wdlab.cifar10.grid import RunSpec, train_run  # noqa: E402
from wdlab.cifar10.standin import build_archive  # noqa: E402
from wdlab.settings import CifarData, load_settings  # noqa: E402

# Strengths per regulariser, each from "no effect" to "too much". L2 and L1 train with SGD (cifar10.train.lr), AdamW
# with its own lr (cifar10.train.adamw_lr), so its λ is ~100× SGD's; AdamW's 0 is AdamW without decay, not l2's 0.
SWEEP: dict[str, tuple[float, ...]] = {
    "l2": (0.0, 5e-3, 5e-2, 1e-1, 2e-1, 5e-1),
    "l1": (1e-3, 3e-3, 1e-2, 3e-2),
    "decoupled": (0.0, 0.5, 2.0, 5.0, 10.0, 20.0, 50.0),
}
SUMMARY = ("valid_accuracy", "test_accuracy", "train_accuracy", "zero_fraction", "w_norm")


def standin_splits(scratch: Path, data: CifarData) -> Splits:
    """The full-size stand-in, cut into the splits `data` (params.yaml's cifar10.data) asks for."""
    archive = build_archive(scratch, images_per_batch=10_000, difficulty="ci")
    return cut_splits(read_archive(archive.path), data)


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


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    cli.add_argument("--only", nargs="+", choices=sorted(SWEEP), help="sweep only these regularisers")
    args = cli.parse_args()
    machine = this_machine()
    print(machine.describe(), flush=True)
    study = load_settings(ROOT / "params.yaml").cifar10
    with tempfile.TemporaryDirectory(prefix="wd-lab-sweep-") as scratch:
        splits = standin_splits(Path(scratch), study.data)
    figures: dict = {"seeds": args.seeds, "epochs": study.train.epochs, "train_images": len(splits.train.labels)}
    start = time.perf_counter()
    for regularizer in args.only or SWEEP:
        by_strength = {}
        for strength in SWEEP[regularizer]:
            runs = []
            for seed in args.seeds:
                result = train_run(RunSpec(study, regularizer, strength, seed, "cpu"), splits)
                final = result.final
                runs.append({key: final[key] for key in SUMMARY} | {"diverged": result.diverged_epoch is not None})
                print(
                    f"{regularizer:9} {strength:<7g} seed {seed}  valid {final['valid_accuracy']:.3f}  "
                    f"test {final['test_accuracy']:.3f}  train {final['train_accuracy']:.3f}  "
                    f"zeros {final['zero_fraction']:.3f}  ‖θ‖ {final['w_norm']:.1f}  ({result.seconds:.0f} s)",
                    flush=True,
                )
            by_strength[f"{strength:g}"] = summarise(runs)
        figures[regularizer] = {"by_strength": by_strength} | optimum(by_strength)
        print(f"{regularizer}: best validation accuracy at {figures[regularizer]['best_valid']:g}", flush=True)
    figures["seconds"] = round(time.perf_counter() - start)
    print(f"written: {write_result('strength_sweep', machine, figures)}")


if __name__ == "__main__":
    main()
