"""The CIFAR-10 grid as independent runs: the picklable spec of one run, and the function any worker trains it with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from wdlab.cifar10.data import Splits
from wdlab.cifar10.training import EpochCallback, RunResult, train
from wdlab.device import device_formats, pick_device, set_cuda_determinism
from wdlab.settings import ImageStudy


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run's numbers besides the data: the study's settings (as the architecture trains
    with them), the regulariser and its strength, the seed, the device kind, the net."""

    study: ImageStudy
    regularizer: str
    strength: float  # λ, or the dropout rate p
    seed: int
    device: str  # the driver's device kind ("cpu", "cuda", "mps"): a worker computes on the same kind
    architecture: str = "resnet"  # or "plain": the reference's CNN, trained with `study.for_architecture("plain")`

    @property
    def key(self) -> str:
        """The run's name in the run cache: regulariser, exact strength (repr), seed."""
        return f"{self.regularizer}_{self.strength!r}_seed_{self.seed}"

    def __str__(self) -> str:
        return f"{self.regularizer} {self.strength:g} seed {self.seed}"


def train_run(spec: RunSpec, splits: Splits, on_epoch: EpochCallback | None = None) -> RunResult:
    """Train one run of the grid on `splits` (moved to the device here, so a worker can get them on the CPU)."""
    device = pick_device(spec.device)
    set_cuda_determinism(
        device, spec.study.train.deterministic
    )  # before the run's first kernel, in whichever process runs it
    formats = device_formats(device, spec.study.train.mixed_precision)
    return train(
        splits.to(formats.device),
        spec.study,
        spec.regularizer,
        spec.strength,
        spec.seed,
        formats,
        on_epoch=on_epoch,
        architecture=spec.architecture,
    )


def epoch_metrics(row: dict[str, float], norms: dict[str, float], angles: dict[str, float]) -> dict[str, float]:
    """One epoch as MLflow metrics: the row's numbers, each layer's ‖W‖ and its mean angular update per step
    (radians; NaN at epoch 0, before any step). Here, so any worker can log them."""
    return (
        {name: float(value) for name, value in row.items()}
        | {f"layer_norm.{layer}": norm for layer, norm in norms.items()}
        | {f"angular_update.{layer}": angle for layer, angle in angles.items()}
    )


def as_record(result: RunResult) -> dict[str, Any]:
    """A run's result as plain data, for the run cache (torch.load(weights_only=True) reads it back)."""
    return dataclasses.asdict(result)


def from_record(record: dict[str, Any]) -> RunResult:
    return RunResult(**record)
