"""The exact optimum that SGD with weight decay approaches: ridge regression in closed form."""

from __future__ import annotations

import torch

from wdlab.synthetic.data import Split


def ridge_solution(train_set: Split, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimiser of mean (ŷ − y)²/2 + λ/2·‖w‖² with the bias unpenalised (λ = 0: min-norm fit).

    Centring removes b; then w = V·diag(s / (s² + nλ))·Uᵀ·y_c from the SVD X_c = U·diag(s)·Vᵀ.
    """
    x, y = train_set.x.double(), train_set.y.double()
    x_mean, y_mean = x.mean(dim=0), y.mean()
    u, s, vh = torch.linalg.svd(x - x_mean, full_matrices=False)
    tol = s.max() * max(x.shape) * torch.finfo(s.dtype).eps
    shrink = torch.where(s > tol, s / (s**2 + len(y) * lam), torch.zeros_like(s))
    weight = vh.T @ (shrink * (u.T @ (y - y_mean)))
    return weight, y_mean - x_mean @ weight
