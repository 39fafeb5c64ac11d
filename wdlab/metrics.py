"""The synthetic study's metrics, each declared once: its name, its label, how a page writes it, which way is better
and the kind of rule checks.yaml guards it with. The evaluate stage, the report pages' tables and figures, and the
test that holds checks.yaml to these kinds read them from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wdlab.regularizers import REGISTRY


@dataclass(frozen=True)
class Metric:
    """One number per (seed, strength) and how it is summarised over seeds."""

    name: str  # its column in results/*/by_seed.csv and its key in the metrics JSON
    label: str  # a table header and axis label; {exact} is the regulariser's exact optimum
    better: Literal["lower", "higher"] | None = None  # None: neither (a norm, a count of zeros)
    format: str = ".3g"  # how a page writes its mean and std
    rule: Literal["mean", "exact"] = "mean"  # its checks.yaml kind over seeds: a trained mean or a closed form
    exact: bool = False  # the regulariser's exact optimum: no run trains it, so a diverged seed still counts

    def label_for(self, regularizer: str) -> str:
        return self.label.format(exact=REGISTRY[regularizer].exact)


SYNTHETIC: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("train_loss", "train loss", better="lower"),
        Metric("test_loss", "test loss", better="lower"),
        Metric("w_norm", "‖w‖"),
        Metric("zeros", "exact zeros", format=".1f"),
        Metric("objective", "objective SGD minimises", better="lower"),
        Metric("distance", "‖w − w_exact‖", better="lower"),
        Metric("cv_loss", "CV loss", better="lower"),
        Metric("reference_test_loss", "{exact} test loss", better="lower", exact=True, rule="exact"),
        Metric("reference_w_norm", "{exact} ‖w‖", exact=True, rule="exact"),
        Metric("reference_zeros", "{exact} zeros", format=".1f", exact=True, rule="exact"),
        Metric("reference_objective", "{exact} objective", exact=True, rule="exact"),
    )
}

# The per-strength table of the study page and the columns of every regulariser's comparison, in page order.
STUDY_TABLE = ("train_loss", "test_loss", "w_norm", "zeros", "cv_loss", "reference_test_loss", "reference_zeros")
COMPARED = (
    "test_loss",
    "train_loss",
    "w_norm",
    "zeros",
    "cv_loss",
    "distance",
    "reference_test_loss",
    "reference_zeros",
)
AT_CHOICE = ("test_loss", "w_norm", "zeros", "reference_test_loss")  # what the comparison reads at the CV strength


def exact_names() -> tuple[str, ...]:
    """The metrics no training run moves: a diverged seed leaves them as they are."""
    return tuple(name for name, metric in SYNTHETIC.items() if metric.exact)
