"""Where each stage reads and writes: the files named in dvc.yaml, in one place."""

from pathlib import Path

SYNTHETIC_DATA = Path("data/synthetic/dataset.pt")
SYNTHETIC_MODELS = Path("models/synthetic")
SYNTHETIC_RESULTS = Path("results/synthetic")
SYNTHETIC_METRICS = Path("metrics/synthetic.json")
SYNTHETIC_CV = SYNTHETIC_RESULTS / "cv.csv"
SYNTHETIC_BY_LAMBDA = SYNTHETIC_RESULTS / "by_lambda.csv"

CIFAR_DATA = Path("data/cifar10")
CIFAR_ARCHIVE_CACHE = Path("data/downloads")
CIFAR_MODELS = Path("models/cifar10")
CIFAR_RESULTS = Path("results/cifar10")
CIFAR_METRICS = Path("metrics/cifar10.json")

REPORTS = Path("reports")
FIGURES = REPORTS / "figures"


def synthetic_model(run: str) -> Path:
    return SYNTHETIC_MODELS / f"{run}.pt"


def synthetic_run_record(run: str) -> Path:
    """The MLflow run a training stage logged to; kept out of the model file so that stays reproducible."""
    return SYNTHETIC_MODELS / f"{run}_mlflow.json"


def synthetic_history(run: str) -> Path:
    return SYNTHETIC_RESULTS / f"{run}_history.csv"


CIFAR_BY_LAMBDA = CIFAR_RESULTS / "by_lambda.csv"


def cifar_model(run: str) -> Path:
    return CIFAR_MODELS / f"{run}.pt"


def cifar_run_record(run: str) -> Path:
    return CIFAR_MODELS / f"{run}_mlflow.json"


def cifar_history(run: str) -> Path:
    return CIFAR_RESULTS / f"{run}_history.csv"


def cifar_layer_norms(run: str) -> Path:
    return CIFAR_RESULTS / f"{run}_layer_norms.csv"
