"""The angular update of each weight per optimiser step: the angle between W before and after the step, measured on
the device and averaged per epoch, for comparison with the rotational equilibrium (wdlab.equilibrium).

Reading the weights never changes them and draws no random numbers, so a run measured is the same run, bit for bit.
Each step costs a copy of the weights and three fused norms; the angles add up on the device, and only the epoch's
means come back to the host (one sync per epoch, none per step). The norms are summed in float64 (float32 on MPS,
which has none): from ‖W_t‖, ‖W_t+1‖ and ‖ΔW‖ the angle is then exact to ~1e-9 rad even when the step also changes
‖W‖ by far more than it turns W (float32 norms would leave an error of about √(2·|Δ‖W‖|/‖W‖·1e-7) rad).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def triangle_angle(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The angle between two vectors of norms `a` and `b` whose difference has norm `c` (elementwise, in radians).

    Kahan's formula for the angle of a needle-like triangle from its sides: accurate to a few ulps even where
    arccos(⟨u, v⟩ / ‖u‖‖v‖) rounds to 0 (a step's angle is often 1e-4 rad or less, where cos θ = 1 − θ²/2 is 1 in
    float32). With a ≥ b: μ = c − (a − b) if b ≥ c, else b − (a − c);
    θ = 2·atan(√(((a − b) + c)·μ / ((a + (b + c))·((a − c) + b)))).
    """
    a, b = torch.maximum(a, b), torch.minimum(a, b)
    mu = torch.where(b >= c, c - (a - b), b - (a - c))
    numerator = ((a - b) + c) * mu
    denominator = (a + (b + c)) * ((a - c) + b)
    return 2 * torch.atan(torch.sqrt(numerator.clamp_min(0) / denominator))


class AngularUpdates:
    """Sums, per weight, the angle each optimiser step turns it by: `before_step()` just before the step,
    `after_step()` just after it (and after any hook that changes the weights as part of the step), `epoch_means()`
    once an epoch: the mean angle per step of each weight since the last call, in radians."""

    def __init__(self, weights: Mapping[str, torch.Tensor]):
        self.names = list(weights)
        self.weights = [w.detach() for w in weights.values()]  # the same storage: sees every step
        self.before = [torch.empty_like(w) for w in self.weights]
        device = self.weights[0].device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.total = torch.zeros(len(self.weights), dtype=self.dtype, device=device)
        self.steps = 0

    @torch.no_grad()
    def before_step(self) -> None:
        torch._foreach_copy_(self.before, self.weights)

    @torch.no_grad()
    def after_step(self) -> None:
        moved = torch._foreach_sub(self.weights, self.before)  # ΔW
        norms = [torch.stack(torch._foreach_norm(ws, 2, dtype=self.dtype)) for ws in (self.before, self.weights, moved)]
        self.total += triangle_angle(*norms)  # ∠(W_t, W_t+1), from ‖W_t‖, ‖W_t+1‖ and ‖ΔW‖
        self.steps += 1

    def epoch_means(self) -> dict[str, float]:
        """Each weight's mean angular update per step since the last call (NaN for a weight with no step)."""
        means = (self.total / self.steps).tolist() if self.steps else [float("nan")] * len(self.names)
        self.total.zero_()
        self.steps = 0
        return dict(zip(self.names, means))
