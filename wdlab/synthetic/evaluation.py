"""A trained synthetic run's final numbers per (seed, strength), beside its regulariser's exact optimum: what the
grids' evaluation (evaluate_synthetic) and the headline run (train_synthetic headline) report."""

from __future__ import annotations

import pandas as pd
import torch

from wdlab.synthetic.data import Split
from wdlab.synthetic.references import penalty
from wdlab.synthetic.training import predict, squared_loss

METRICS = [
    "train_loss",
    "test_loss",
    "w_norm",
    "zeros",
    "objective",
    "distance",
    "reference_test_loss",
    "reference_w_norm",
    "reference_zeros",
    "reference_objective",
]
EXACT = (
    "reference_test_loss",
    "reference_w_norm",
    "reference_zeros",
    "reference_objective",
)  # untouched by a diverged run
RUN_KEYS = ("regularizer", "seeds", "lambdas", "weight", "bias", "diverged_epoch", "reference_weight", "reference_bias")


def evaluate_run(run: dict, train_set: Split, test_set: Split) -> pd.DataFrame:
    """Per (seed, strength) of a trained run {RUN_KEYS}: final losses, ‖w‖ and exact zeros of the trained model beside
    the regulariser's exact optimum on that seed's data, and how far the trained weights are from it."""
    regularizer, rows = run["regularizer"], []
    for g, strength in enumerate(run["lambdas"].tolist()):
        weight, bias = run["weight"][:, g : g + 1].double(), run["bias"][:, g : g + 1]  # [S, 1, d], [S, 1]
        ref_w, ref_b = run["reference_weight"][:, g : g + 1], run["reference_bias"][:, g : g + 1]  # [S, 1, d], [S, 1]
        train_loss, ref_train_loss = loss(train_set, weight, bias), loss(train_set, ref_w, ref_b)
        test_loss, ref_test_loss = loss(test_set, weight, bias), loss(test_set, ref_w, ref_b)
        objective = (
            train_loss + penalty(regularizer, train_set, weight, strength)[:, 0]
        )  # what SGD minimises (dropout: in expectation)
        ref_objective = ref_train_loss + penalty(regularizer, train_set, ref_w, strength)[:, 0]
        for s, seed in enumerate(run["seeds"].tolist()):
            rows.append(
                {
                    "regularizer": regularizer,
                    "seed": seed,
                    "lambda": strength,
                    "train_loss": train_loss[s].item(),
                    "test_loss": test_loss[s].item(),
                    "w_norm": weight[s, 0].norm().item(),
                    "zeros": int((weight[s, 0] == 0).sum()),  # exactly zero: only a proximal (L1) step makes them
                    "objective": objective[s].item(),
                    "distance": (weight[s, 0] - ref_w[s, 0]).norm().item(),  # ‖w − w_exact‖
                    "reference_test_loss": ref_test_loss[s].item(),
                    "reference_w_norm": ref_w[s, 0].norm().item(),
                    "reference_zeros": int((ref_w[s, 0] == 0).sum()),
                    "reference_objective": ref_objective[s].item(),
                    "diverged": bool(run["diverged_epoch"][s, g] >= 0),
                }
            )
    return pd.DataFrame(rows)


def loss(split: Split, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(ŷ − y)²/2 averaged per seed, in float64 so the exact solution is not blurred by rounding: [S]."""
    return squared_loss(predict(split.x.double(), weight.double(), bias.double()), split.y.double())[:, 0]
