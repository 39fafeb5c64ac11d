"""Typed, validated settings: `params.yaml` read once into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A value in params.yaml that the study cannot run with; the message names the key."""


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least(minimum: int):
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}"

    return check


def _probability(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _lambda_grid(values: tuple[float, ...]) -> str | None:
    if not values:
        return "must list at least one λ"
    if any(v < 0 for v in values):
        return "every λ must be >= 0"
    if len(set(values)) != len(values):
        return "λ values must be distinct"
    return None


def check(rule, doc: str = "") -> Any:
    """A dataclass field whose value must pass `rule` (returns an error text or None)."""
    return field(metadata={"check": rule, "doc": doc})


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool
    # Used when MLFLOW_TRACKING_URI is unset; a relative sqlite path lives at the project root.
    uri: str
    experiment_synthetic: str
    experiment_cifar10: str


@dataclass(frozen=True)
class SyntheticData:
    n_train: int = check(_at_least(2))
    n_test: int = check(_at_least(1))
    n_features: int = check(_at_least(1))
    true_w: float
    true_b: float
    noise_std: float = check(_non_negative)


@dataclass(frozen=True)
class SyntheticTrain:
    implementation: Literal["scratch", "concise"]
    batch_size: int = check(_at_least(1))
    lr: float = check(_positive)
    epochs: int = check(_at_least(1))
    init_std: float = check(_non_negative)


@dataclass(frozen=True)
class SyntheticSettings:
    data: SyntheticData
    train: SyntheticTrain
    lambda_grid: tuple[float, ...] = check(_lambda_grid)
    cv_folds: int = check(_at_least(2))


@dataclass(frozen=True)
class CifarDownload:
    url: str
    md5: str


@dataclass(frozen=True)
class CifarData:
    train_subset: int = check(_non_negative, "0 = every training image not held out for validation")
    valid_size: int = check(_at_least(10), "training images held out to choose λ; never trained on")
    augment: bool


@dataclass(frozen=True)
class CifarModel:
    width: int = check(_at_least(1))


@dataclass(frozen=True)
class CifarTrain:
    optimizer: Literal["sgd", "adamw"]
    lr: float = check(_positive)
    momentum: float = check(_probability)
    nesterov: bool
    epochs: int = check(_at_least(1))
    batch_size: int = check(_at_least(1))
    schedule: Literal["onecycle", "cosine", "constant"]
    warmup_fraction: float = check(_probability)
    label_smoothing: float = check(_probability)
    decay_norm_and_bias: bool
    mixed_precision: bool  # bf16 autocast where the hardware computes in bf16 (CUDA, CPUs with AVX512-BF16)


@dataclass(frozen=True)
class CifarSettings:
    wd: float = check(_non_negative)
    download: CifarDownload
    data: CifarData
    model: CifarModel
    train: CifarTrain
    lambda_grid: tuple[float, ...] = check(_lambda_grid)


@dataclass(frozen=True)
class Settings:
    seed: int = check(_non_negative)
    device: Literal["auto", "cpu", "cuda", "mps"]
    wd: float = check(_non_negative, "λ of the synthetic headline run")
    tracking: TrackingSettings
    synthetic: SyntheticSettings
    cifar10: CifarSettings


def load_settings(path: Path | str = PARAMS_FILE) -> Settings:
    """Read and validate the whole params file; raise ParamsError naming the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project root, where params.yaml lives")
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ParamsError(f"{path} is not valid YAML{where}: fix the syntax") from None
    return parse_settings(raw, source=str(path))


def parse_settings(raw: Any, source: str = "params.yaml") -> Settings:
    return _build(Settings, raw, prefix="", source=source)


def _build(cls: type, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {where} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ParamsError(
            f"{source}: unknown key '{key}'; allowed here: {', '.join(fields)}"
        )
    values = {}
    for name, spec in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            raise ParamsError(f"{source}: missing key '{key}'")
        value = _convert(hints[name], raw[name], key, source)
        rule = spec.metadata.get("check")
        problem = rule(value) if rule else None
        if problem:
            raise ParamsError(f"{source}: {key} = {raw[name]!r} {problem}")
        values[name] = value
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, source: str) -> Any:
    def bad(expected: str) -> ParamsError:
        return ParamsError(f"{source}: {key} = {value!r} must be {expected}")

    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.", source=source)
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise bad("one of " + ", ".join(map(str, allowed)))
        return value
    if origin is tuple:
        (item_hint, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad("a list")
        return tuple(_convert(item_hint, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    raise TypeError(f"unsupported settings type for {key}: {hint}")
