"""The synthetic study's mathematics: the generator, both SGD implementations, ridge, cross-validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.workspace import load_params
from wdlab.results import best_lambda
from wdlab.settings import parse_settings
from wdlab.synthetic import data as synthetic_data
from wdlab.synthetic import ridge, selection, training

SETTINGS = parse_settings(load_params())
DATA = SETTINGS.synthetic.data
TRAIN = SETTINGS.synthetic.train
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits() -> tuple[synthetic_data.Split, synthetic_data.Split]:
    data = synthetic_data.make_dataset(DATA, SETTINGS.seed)
    return synthetic_data.Split(data["x_train"], data["y_train"]), synthetic_data.Split(data["x_test"], data["y_test"])


@pytest.fixture(scope="module")
def default_run(splits) -> training.GridRun:
    train, test = splits
    return training.train_grid(train, (0.0, 3.0), TRAIN, SETTINGS.seed, CPU, {"test": test}, progress=False)


# ---------- generator ----------

def test_generator_shapes_and_statistics():
    big = DATA.model_copy(update=dict(n_train=2000, n_test=2000))
    data = synthetic_data.make_dataset(big, seed=1)
    assert data["x_train"].shape == (2000, DATA.n_features) and data["y_test"].shape == (2000,)
    x = torch.cat([data["x_train"], data["x_test"]])
    y = torch.cat([data["y_train"], data["y_test"]])
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    noise = y - (x @ data["true_w"] + DATA.true_b)
    assert abs(noise.std().item() - DATA.noise_std) < 0.1 * DATA.noise_std
    assert abs(noise.mean().item()) < 3 * DATA.noise_std / np.sqrt(len(y))
    # Var(y) = d·w*² + σ² for X ~ N(0, 1)
    assert y.var().item() == pytest.approx(DATA.n_features * DATA.true_w**2 + DATA.noise_std**2, rel=0.1)


def test_generator_is_deterministic_per_seed():
    a, b, c = (synthetic_data.make_dataset(DATA, s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["x_train"], c["x_train"])


# ---------- training: the correctness bar ----------

def test_lambda_zero_overfits(default_run):
    train_loss, test_loss, w_norm = (default_run.final(k)[0] for k in ("train_loss", "test_loss", "w_norm"))
    assert 12 < w_norm < 16
    assert test_loss > 50
    assert train_loss < 1e-3


def test_lambda_three_generalises(default_run):
    test0, test3 = default_run.final("test_loss")
    w_norm = default_run.final("w_norm")[1]
    assert 0.3 < w_norm < 0.55
    assert test3 < 1
    assert test3 * 100 < test0


def test_weight_norm_falls_as_lambda_grows(splits):
    train, _ = splits
    run = training.train_grid(train, SETTINGS.synthetic.lambda_grid, TRAIN, 0, CPU, progress=False)
    norms = run.final("w_norm")
    assert all(a > b for a, b in zip(norms, norms[1:])), norms


def test_history_starts_at_initialisation(default_run):
    assert default_run.history["w_norm"].shape == (TRAIN.epochs + 1, 2)
    init_norm = default_run.history["w_norm"][0]
    assert torch.equal(init_norm[0], init_norm[1]), "every λ must start from the same weights"


def test_scratch_and_concise_agree(splits):
    """L2 in the loss + hand-written SGD and torch.optim.SGD(weight_decay=λ) are the same mathematics."""
    train, test = splits
    lambdas = (0.0, 0.3, 3.0, 30.0)
    runs = {
        impl: training.train_grid(train, lambdas, TRAIN.model_copy(update=dict(implementation=impl)), 0, CPU, {"test": test}, progress=False)
        for impl in ("scratch", "concise")
    }
    torch.testing.assert_close(runs["scratch"].weight, runs["concise"].weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs["scratch"].bias, runs["concise"].bias, rtol=1e-4, atol=1e-5)
    # and they differ from a run with another λ, so the check can fail
    assert not torch.allclose(runs["scratch"].weight[1], runs["scratch"].weight[2], atol=1e-3)


def test_batched_grid_matches_one_lambda_at_a_time(splits):
    train, _ = splits
    grid = training.train_grid(train, (0.0, 1.0, 3.0), TRAIN, 0, CPU, progress=False)
    for g, lam in enumerate(grid.lambdas):
        single = training.train_grid(train, (lam,), TRAIN, 0, CPU, progress=False)
        torch.testing.assert_close(single.weight[0], grid.weight[g], rtol=1e-5, atol=1e-6)


def test_same_seed_same_result_other_seed_differs(splits):
    train, _ = splits
    a, b, c = (training.train_grid(train, (0.0, 3.0), TRAIN, seed, CPU, progress=False) for seed in (0, 0, 1))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.history["train_loss"], b.history["train_loss"])
    assert not torch.equal(a.weight, c.weight)


def test_divergence_is_detected_and_the_rest_completes(splits):
    train, test = splits
    spec = TRAIN.model_copy(update=dict(lr=0.05, epochs=20))  # stable for λ = 0, explodes for λ = 100 (ηλ > 2)
    run = training.train_grid(train, (0.0, 100.0), spec, 0, CPU, {"test": test}, progress=False)
    assert run.diverged_epoch[0] is None
    assert run.diverged_epoch[1] is not None and run.diverged_epoch[1] <= 20
    assert np.isfinite(run.final("train_loss")[0])


def test_everything_diverging_stops_early(splits):
    train, _ = splits
    spec = TRAIN.model_copy(update=dict(lr=10.0, epochs=100))
    run = training.train_grid(train, (0.0,), spec, 0, CPU, progress=False)
    assert run.diverged_epoch[0] is not None
    assert len(run.history["train_loss"]) < spec.epochs + 1


# ---------- exact ridge and cross-validation ----------

@pytest.mark.parametrize("lam", [0.0, 0.01, 3.0, 100.0])
def test_ridge_matches_numpy(splits, lam):
    train, _ = splits
    x, y = train.x.double().numpy(), train.y.double().numpy()
    xc, yc = x - x.mean(0), y - y.mean()
    n, d = x.shape
    if lam == 0:
        w_np = np.linalg.pinv(xc) @ yc  # minimum-norm interpolant
    else:
        w_np = np.linalg.solve(xc.T @ xc + n * lam * np.eye(d), xc.T @ yc)
    b_np = y.mean() - x.mean(0) @ w_np
    w, b = ridge.ridge_solution(train, lam)
    np.testing.assert_allclose(w.numpy(), w_np, rtol=1e-6, atol=1e-10)
    assert b.item() == pytest.approx(b_np, rel=1e-6, abs=1e-10)


def test_ridge_gradient_vanishes(splits):
    """The exact solution is a stationary point of mean (ŷ − y)²/2 + λ/2·‖w‖²."""
    train, _ = splits
    lam = 3.0
    w, b = ridge.ridge_solution(train, lam)
    x, y = train.x.double(), train.y.double()
    residual = x @ w + b - y
    assert (x.T @ residual / len(y) + lam * w).abs().max().item() < 1e-10
    assert abs(residual.mean().item()) < 1e-10


def test_sgd_approaches_ridge_with_strong_decay(splits):
    train, test = splits
    run = training.train_grid(train, (30.0,), TRAIN, 0, CPU, {"test": test}, progress=False)
    w, b = ridge.ridge_solution(train, 30.0)
    ridge_test = training.squared_loss(training.predict(test.x.double(), w[None], b[None]), test.y.double()).item()
    assert run.final("test_loss")[0] == pytest.approx(ridge_test, rel=0.1)


def test_kfold_partitions_the_training_set():
    folds = selection.kfold_indices(20, 5, seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(20))
    assert [len(f) for f in folds] == [4] * 5
    with pytest.raises(ValueError):
        selection.kfold_indices(3, 5, seed=0)


def test_cross_validation_prefers_decay(splits):
    train, _ = splits
    lambdas = (0.0, 3.0)
    cv = selection.cross_validate(train, lambdas, TRAIN, 4, 0, CPU)
    assert cv.shape == (4, 2)
    assert best_lambda(selection.mean_cv_loss(selection.cv_table(lambdas, cv)), "cv_loss", higher_is_better=False) == 3.0


def test_best_lambda_never_picks_a_diverged_run():
    cv = torch.tensor([[1.0, float("nan"), 0.5], [1.0, float("inf"), 0.7]])
    assert best_lambda(selection.mean_cv_loss(selection.cv_table((0.0, 1.0, 2.0), cv)), "cv_loss", higher_is_better=False) == 2.0
