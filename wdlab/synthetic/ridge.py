"""The exact optimum that SGD with weight decay approaches: ridge regression in closed form, per seed."""

from __future__ import annotations

import torch

from wdlab.synthetic.data import Split


def ridge_solution(train_set: Split, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimiser of mean (ŷ − y)²/2 + λ/2·‖w‖² with the bias unpenalised (λ = 0: min-norm fit), for each
    seed's dataset: x [S, n, d] → weight [S, d], bias [S].

    Centring removes b; then w = V·diag(s / (s² + nλ))·Uᵀ·y_c from the SVD X_c = U·diag(s)·Vᵀ.
    """
    x, y = train_set.x.double(), train_set.y.double()
    x_mean, y_mean = x.mean(dim=-2), y.mean(dim=-1)
    u, s, vh = torch.linalg.svd(x - x_mean[:, None, :], full_matrices=False)
    tol = s.amax(dim=-1, keepdim=True) * max(x.shape[-2:]) * torch.finfo(s.dtype).eps
    shrink = torch.where(s > tol, s / (s**2 + y.shape[-1] * lam), torch.zeros_like(s))
    weight = torch.einsum("skd,sk->sd", vh, shrink * torch.einsum("snk,sn->sk", u, y - y_mean[:, None]))
    return weight, y_mean - (x_mean * weight).sum(dim=-1)
