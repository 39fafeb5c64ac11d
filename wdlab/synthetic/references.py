"""The exact optima the regularisers' SGD approaches, per seed (the bias is never penalised): ridge in closed form,
the lasso from scikit-learn's coordinate descent with its objective matched to ours, and dropout's expectation, a
ridge with one weight per feature (Wager, Wang & Liang 2013), in closed form. Which one a regulariser approaches, at
which argument, its definition says (wdlab.regularizers).
"""

from __future__ import annotations

import torch

from wdlab.regularizers import dropout_scales, get
from wdlab.synthetic.data import Split

LASSO_TOL = 1e-12  # scikit-learn's duality-gap tolerance (relative to ‖y‖²/n): far below the differences shown


def reference_solution(regularizer: str, train_set: Split, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact minimiser of regulariser's objective at `strength` on each seed's training set: weight [S, d],
    bias [S]."""
    solver, argument = get(regularizer).reference(strength)
    return SOLVERS[solver](train_set, argument)


def penalty(regularizer: str, train_set: Split, weight: torch.Tensor, strength: float) -> torch.Tensor:
    """The term a regulariser adds to mean (ŷ − y)²/2 (in expectation over its random draws), per model:
    weight [S, ..., d] → [S, ...]."""
    return get(regularizer).penalty(train_set.x, weight, strength)


def dropout_ridge_solution(train_set: Split, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimiser of mean (ŷ − y)²/2 + ½·Σ_j c_j·w_j² (dropout's expected objective), per seed; p = 0: the
    min-norm fit. Centring removes b: (X_cᵀX_c/n + diag(c))·w = X_cᵀy_c/n."""
    if rate == 0:
        return ridge_solution(train_set, 0.0)
    x, y = train_set.x.double(), train_set.y.double()
    n = y.shape[-1]
    x_mean, y_mean = x.mean(dim=-2), y.mean(dim=-1)
    xc, yc = x - x_mean[:, None, :], y - y_mean[:, None]
    gram = xc.transpose(-1, -2) @ xc / n + torch.diag_embed(
        dropout_scales(train_set.x, rate)
    )  # symmetric positive definite
    weight = torch.cholesky_solve(xc.transpose(-1, -2) @ yc[..., None] / n, torch.linalg.cholesky(gram))[..., 0]
    return weight, y_mean - (x_mean * weight).sum(dim=-1)


def lasso_solution(train_set: Split, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimiser of mean (ŷ − y)²/2 + λ·‖w‖₁ with the bias unpenalised, per seed (λ = 0: the min-norm fit).

    scikit-learn's Lasso minimises 1/(2n)·‖y − Xw − b‖² + α·‖w‖₁ with an unpenalised intercept: the same
    objective with α = λ.
    """
    if strength == 0:
        return ridge_solution(train_set, 0.0)
    from sklearn.linear_model import Lasso

    x, y = train_set.x.double().numpy(), train_set.y.double().numpy()
    weights, biases = [], []
    for xs, ys in zip(x, y):
        fit = Lasso(alpha=strength, fit_intercept=True, tol=LASSO_TOL, max_iter=1_000_000).fit(xs, ys)
        weights.append(torch.from_numpy(fit.coef_.copy()))
        biases.append(float(fit.intercept_))
    return torch.stack(weights), torch.tensor(biases, dtype=torch.float64)


def ridge_solution(train_set: Split, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimiser of mean (ŷ − y)²/2 + λ/2·‖w‖² with the bias unpenalised (λ = 0: min-norm fit), for each
    seed's dataset: x [S, n, d] → weight [S, d], bias [S].

    Centring removes b; then w = V·diag(s / (s² + nλ))·Uᵀ·y_c from the SVD X_c = U·diag(s)·Vᵀ.
    """
    x, y = train_set.x.double(), train_set.y.double()
    x_mean, y_mean = x.mean(dim=-2), y.mean(dim=-1)
    u, s, vh = torch.linalg.svd(x - x_mean[:, None, :], full_matrices=False)
    tol = s.amax(dim=-1, keepdim=True) * max(x.shape[-2:]) * torch.finfo(s.dtype).eps
    shrink = torch.where(s > tol, s / (s**2 + y.shape[-1] * strength), torch.zeros_like(s))
    weight = torch.einsum("skd,sk->sd", vh, shrink * torch.einsum("snk,sn->sk", u, y - y_mean[:, None]))
    return weight, y_mean - (x_mean * weight).sum(dim=-1)


SOLVERS = {"ridge": ridge_solution, "lasso": lasso_solution, "dropout_ridge": dropout_ridge_solution}
