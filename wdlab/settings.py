"""Typed, validated settings: `params.yaml` read once into frozen pydantic models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo

from wdlab import regularizers

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A value in params.yaml that the study cannot run with; the message names the key."""


def _probability(value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError("must be in [0, 1)")
    return value


def _lambdas(grid: tuple[float, ...]) -> tuple[float, ...]:
    if any(v < 0 for v in grid):
        raise ValueError("every λ must be >= 0")
    if len(set(grid)) != len(grid):
        raise ValueError("λ values must be distinct")
    return grid


def _seeds(seeds: tuple[int, ...]) -> tuple[int, ...]:
    if not seeds:
        raise ValueError("must list at least one seed")
    if any(v < 0 for v in seeds):
        raise ValueError("every seed must be >= 0")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct")
    return seeds


def _gpus(value: float) -> float:
    if value > 1 and not value.is_integer():
        raise ValueError("must be a fraction of one GPU (at most 1) or a whole number of GPUs")
    return value


Text = Annotated[str, Field(min_length=1)]
Probability = Annotated[float, AfterValidator(_probability)]
# The tuple alone is lax so that a YAML list becomes a tuple; its items stay strict floats (config below).
LambdaGrid = Annotated[
    tuple[float, ...], Field(strict=False, min_length=1, description="the λ values compared"), AfterValidator(_lambdas)
]
Seeds = Annotated[tuple[int, ...], Field(strict=False), AfterValidator(_seeds)]
Regularizer = Literal[regularizers.NAMES]  # type: ignore[valid-type]  # the names of wdlab/regularizers.py
REGULARIZERS: tuple[str, ...] = regularizers.NAMES


def _rates(grid: tuple[float, ...]) -> tuple[float, ...]:
    if any(not 0 <= v < 1 for v in grid):
        raise ValueError("every rate must be in [0, 1)")
    return grid


RateGrid = Annotated[LambdaGrid, AfterValidator(_rates)]


class _Model(BaseModel):
    # strict: a bool is not an int and "100" is not a number (an int is still a valid float).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class _StrengthGrids(_Model):
    def of(self, regularizer: str) -> tuple[float, ...]:
        return getattr(self, regularizer)


def _strengths(name: str, doc: str, meaning: str) -> type[_StrengthGrids]:
    """A model with one strength grid per regulariser of the registry, each described by its definition."""
    fields: dict[str, Any] = {
        r.name: (RateGrid if r.is_rate else LambdaGrid, Field(description=getattr(r, meaning)))
        for r in regularizers.REGISTRY.values()
    }
    return create_model(name, __base__=_StrengthGrids, __doc__=doc, **fields)


Strengths = _strengths(
    "Strengths", "Each regulariser's own strength grid; every strength is trained on every seed.", "synthetic_meaning"
)


class TrackingSettings(_Model):
    enabled: bool = Field(description="false: train without MLflow")
    uri: Text = Field(
        description="used when MLFLOW_TRACKING_URI is unset; a relative sqlite path lives at the project root"
    )
    experiment_synthetic: Text
    experiment_cifar10: Text
    experiment_fashion_mnist: Text

    def experiment(self, study: str) -> str:
        """The MLflow experiment of `study` (synthetic or an image study's key)."""
        return getattr(self, f"experiment_{study}")


class SyntheticData(_Model):
    n_train: int = Field(ge=2)
    n_test: int = Field(ge=1)
    n_features: int = Field(ge=1)
    true_w: float = Field(description="every entry of w*")
    true_b: float
    noise_std: float = Field(ge=0, description="std of the label noise ε")


class SyntheticTrain(_Model):
    implementation: Literal["scratch", "concise"] = Field(
        description="scratch: λ/2·‖w‖² in the loss; concise: SGD(weight_decay=λ)"
    )
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)
    init_std: float = Field(ge=0, description="w ~ N(0, init_std²), b = 0")


class SyntheticSettings(_Model):
    seeds: Seeds = Field(
        description="one run of every λ per seed: each draws its own data, initial weights, batch order and folds"
    )
    regularizer: Regularizer = Field(
        description="the headline run's (strength = wd) and the one the synthetic report studies"
    )
    data: SyntheticData
    train: SyntheticTrain
    strengths: Strengths

    @property
    def strength_grid(self) -> tuple[float, ...]:
        """The strength grid of the regulariser this study reports on."""
        return self.strengths.of(self.regularizer)

    cv_folds: int = Field(ge=2, description="k-fold cross-validation on the training set picks λ")


class ImageDownload(_Model):
    """Where a study's dataset comes from. null keys: the dataset's own sources (wdlab/datasets/), verified by the
    checksums its definition declares; CIFAR-10's archive is named by its md5, so it needs both."""

    url: Text | None = Field(
        None, description="the official archive, a mirror, a file:// URL or a local path; null: the dataset's own"
    )
    md5: Text | None = Field(None, description="the archive's md5 (CIFAR-10); null: the definition's checksums")


class ImageData(_Model):
    split_seed: int = Field(
        ge=0, description="draws the training subset and the validation images, the same for every seed"
    )
    train_subset: int = Field(ge=0, description="0 = every training image not held out for validation")
    valid_size: int = Field(ge=10, description="training images held out to choose λ; never trained on")
    curve_subset: int = Field(
        ge=0,
        description=(
            "images of each split the per-epoch curves are measured on (0 = all); the last epoch uses every image"
        ),
    )
    augment: bool = Field(description="random flip + crop")


class ImageModel(_Model):
    width: int = Field(ge=1, description="channels of the first layer")


class PlainModel(_Model):
    channels: int = Field(ge=1, description="channels of both 5×5 convs (the reference's: 64)")
    hidden: int = Field(ge=1, description="units of the hidden linear layer (the reference's: 128)")


class ImageTrain(_Model):
    lr: float = Field(gt=0, description="peak learning rate of SGD (regularisers l2, l1, dropout)")
    adamw_lr: float = Field(gt=0, description="peak learning rate of AdamW (regulariser decoupled)")
    momentum: Probability = Field(description="SGD momentum; AdamW's β₁")
    nesterov: bool
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    schedule: Literal["onecycle", "cosine", "constant"]
    warmup_fraction: Probability
    label_smoothing: Probability
    decay_norm_and_bias: bool = Field(description="false: λ applies to conv/linear weights only")
    mixed_precision: bool = Field(
        description="bf16 autocast where the hardware computes in bf16 (CUDA, CPUs with AVX512-BF16)"
    )
    deterministic: bool = Field(
        description=(
            "CUDA: deterministic kernels, so a rerun reproduces every number; false: torch's faster defaults. "
            "The CPU is deterministic either way"
        )
    )


class PlainSettings(_Model):
    """The reference material's plain CNN (no normalisation), the architecture axis beside the ResNet: its own size,
    training settings and L2 grid, on every seed of the study's seeds and the same data."""

    model: PlainModel
    train: ImageTrain
    l2: LambdaGrid = Field(description="the λ grid of L2 (SGD + λ·w in the gradient) for the plain CNN")


ImageStrengths = _strengths(
    "ImageStrengths",
    "Each regulariser's own strength grid for the CNN; every strength is trained on every seed.",
    "cifar_meaning",
)


class ImageStudy(_Model):
    """One image study: a registered dataset (wdlab/datasets/), the ResNet over every regulariser's grid and the
    plain CNN over its L2 grid, on every seed. params.yaml holds one section per study (cifar10, fashion_mnist)."""

    dataset: Text = Field(description="a dataset of wdlab/datasets/registry.py (stages/validate.py checks the name)")
    seeds: Seeds = Field(
        description="one run of every λ per seed: each draws its own initial weights, batch order and augmentation"
    )
    regularizer: Regularizer = Field(
        description="the headline run's (strength = <study>.wd) and the one the study's report studies"
    )
    wd: float = Field(ge=0, description="strength of the study's headline run: λ, or the dropout rate p")
    download: ImageDownload = ImageDownload()
    data: ImageData
    model: ImageModel
    train: ImageTrain
    strengths: ImageStrengths
    plain: PlainSettings

    @model_validator(mode="after")
    def _archive_named(self) -> ImageStudy:
        if self.dataset == "cifar10" and not (self.download.url and self.download.md5):
            raise ValueError("a CIFAR-10 study needs download.url and download.md5: its archive is named by its md5")
        if self.dataset != "cifar10" and self.download.md5 is not None:
            raise ValueError(
                f"download.md5 = {self.download.md5!r}: {self.dataset} is verified file by file by the checksums its "
                "definition declares (wdlab/datasets/), so it takes no md5: set it to null"
            )
        return self

    @property
    def strength_grid(self) -> tuple[float, ...]:
        """The strength grid of the regulariser this study reports on."""
        return self.strengths.of(self.regularizer)

    def for_architecture(self, architecture: str) -> ImageStudy:
        """The settings a run of `architecture` trains with: these for the ResNet; for the plain CNN its own training
        settings (<study>.plain.train) in place of <study>.train (its size: <study>.plain.model, read by the net)."""
        return self if architecture == "resnet" else self.model_copy(update={"train": self.plain.train})


class ExecutorSettings(_Model):
    """Where the runs of a grid stage happen. It never changes what a run computes, so no stage lists it in dvc.yaml."""

    kind: Literal["local", "ray"] = Field(
        "local", description="local: one run after another in the stage's process; ray: each run a Ray task"
    )
    address: Text | None = Field(
        None,
        description=(
            "the Ray cluster, host:port of its head (ray start --head); "
            "null: RAY_ADDRESS, else a Ray instance on this machine"
        ),
    )
    cpus_per_run: int = Field(
        2,
        ge=1,
        description=(
            "CPU cores a run reserves on a Ray node, and the torch threads it computes with under either executor"
        ),
    )
    gpus_per_run: Annotated[float, AfterValidator(_gpus)] = Field(
        0.0, ge=0, description="GPUs a run reserves on a Ray node: 1 = a whole GPU, 0.5 = two runs share one, 0 = none"
    )
    max_retries: int = Field(
        3, ge=0, description="how often a run whose worker or node died is started again elsewhere"
    )


class Settings(_Model):
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(description="auto: CUDA, then MPS, then CPU")
    wd: float = Field(ge=0, description="strength of the synthetic headline run: λ, or the dropout rate p")
    tracking: TrackingSettings
    synthetic: SyntheticSettings
    images: Annotated[tuple[str, ...], Field(strict=False)] = Field(
        description="the image studies `dvc repro` runs, each a section below (cifar10, fashion_mnist)"
    )
    fashion_mnist: ImageStudy
    cifar10: ImageStudy
    executor: ExecutorSettings = ExecutorSettings()

    def study(self, key: str) -> ImageStudy:
        """The image study `key` (a section of params.yaml: fashion_mnist, cifar10)."""
        if key not in IMAGE_STUDIES:
            raise ParamsError(f"no image study is called {key!r}: choose one of {', '.join(IMAGE_STUDIES)}")
        return getattr(self, key)

    @model_validator(mode="after")
    def _known_studies(self) -> Settings:
        if unknown := [key for key in self.images if key not in IMAGE_STUDIES]:
            raise ValueError(
                f"images = {list(self.images)}: {unknown[0]} is no image study ({', '.join(IMAGE_STUDIES)})"
            )
        if len(set(self.images)) != len(self.images):
            raise ValueError(f"images = {list(self.images)} names a study twice")
        return self

    @model_validator(mode="after")
    def _rates_below_one(self) -> Settings:
        headlines = [("wd", self.wd, "synthetic")] + [(f"{key}.wd", self.study(key).wd, key) for key in IMAGE_STUDIES]
        for key, value, study in headlines:
            definition = regularizers.get(getattr(self, study).regularizer)
            if definition.is_rate and not value < 1:
                raise ValueError(
                    f"{key} = {value:g} must be a {definition.title} rate in [0, 1) "
                    f"when {study}.regularizer is {definition.name}"
                )
        return self


IMAGE_STUDIES: tuple[str, ...] = tuple(
    name for name, field in Settings.model_fields.items() if field.annotation is ImageStudy
)  # the params.yaml sections of image studies, in their order there


def load_settings(path: Path | str = PARAMS_FILE) -> Settings:
    """Read and validate the whole params file; raise ParamsError naming the first bad key."""
    # Imported here: the models alone need only pydantic, so benchmarks.gpu_check runs without the pipeline's packages.
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

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
    """Validate already-loaded params; the first problem becomes one ParamsError line."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_message(err.errors()[0], source)) from None


# Each pydantic error type in the words of params.yaml; `{...}` are the error's context values
# (`:g` because pydantic reports a float field's bound as 0.0 where params.yaml means 0).
_PHRASES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a non-empty string",
    "string_too_short": "must be a non-empty string",
    "literal_error": "must be one of {expected}",
    "greater_than": "must be > {gt:g}",
    "greater_than_equal": "must be >= {ge:g}",
    "too_short": "must list at least one λ",  # only the λ grids have a length
    "tuple_type": "must be a list",
    "value_error": "{error}",  # our own validators' text
}


def _message(err: Mapping[str, Any], source: str) -> str:
    loc, kind = err["loc"], err["type"]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "missing":
        return f"{source}: missing key '{key}'"
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'; allowed here: {', '.join(_model_at(loc[:-1]).model_fields)}"
    if kind == "value_error" and not loc:  # a rule across keys
        return f"{source}: {err['ctx']['error']}"
    if kind == "value_error" and isinstance(err["input"], Mapping):  # a rule across the keys of one section
        return f"{source}: {key}: {err['ctx']['error']}"
    if kind == "model_type":
        return f"{source}: {key or 'the top level'} must be a mapping of keys, got {err['input']!r}"
    field = _field_at(loc)
    ctx = dict(err.get("ctx", {}))
    if kind == "literal_error" and field is not None:
        ctx["expected"] = ", ".join(map(str, get_args(field.annotation)))  # pydantic's reads "'a', 'b' or 'c'"
    phrase = _PHRASES[kind].format(**ctx) if kind in _PHRASES else err["msg"][:1].lower() + err["msg"][1:]
    described = f" ({field.description})" if field is not None and field.description else ""
    return f"{source}: {key} = {err['input']!r} {phrase}{described}"


def _model_at(names: tuple[Any, ...]) -> type[BaseModel]:
    model: Any = Settings
    for name in names:
        model = model.model_fields[name].annotation
    return model


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    names = tuple(p for p in loc if isinstance(p, str))  # a grid item's error belongs to the grid's field
    return _model_at(names[:-1]).model_fields.get(names[-1]) if names else None
