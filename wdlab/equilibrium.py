"""The rotational equilibrium of scale-invariant weights: the angular update per step at which weight decay and the
gradient noise balance, and how fast a run approaches it (van Laarhoven 2017; Wan et al. 2021, "Spherical motion
dynamics"; Kosson, Messmer & Jaggi 2024, "Rotational equilibrium: how weight decay balances learning across neural
networks").

A weight W followed by a normalisation (BatchNorm) is scale-invariant: the loss sees only W/‖W‖, so its gradient is
orthogonal to W and scales as 1/‖W‖. Each step's decay pulls ‖W‖ in; each gradient step, orthogonal to W, pushes it out
(Pythagoras). Where the two balance, the expected angle between W before and after a step depends on η and λ alone:

    SGD + momentum μ (L2: g ← ∇L + λW; v ← μv + g; W ← W − ηv):   θ = √(2ηλ / (1 + μ))
    the same with Nesterov momentum (W ← W − η(g + μv)):          θ = √(2ηλ · (1 + 2μ − 2μ³) / (1 + μ))
    AdamW with β₁ (W ← (1 − ηλ)W − η·m̂/(√v̂ + ε)):                   θ = √(2ηλ · (1 − β₁) / (1 + β₁))

The SGD and AdamW lines are Kosson et al.'s (their Table 1). The Nesterov line is the same derivation for PyTorch's
Nesterov step: a gradient still moves W by η/(1 − μ) in all and the decay is still ηλ/(1 − μ) per step, but a single
step's update is larger, E‖u‖² = η²‖g‖²·((1 + μ)² + μ⁴/(1 − μ²)) instead of η²‖g‖²/(1 − μ²); at μ = 0.9 that is
1.16× the heavy-ball angle. AdamW's √(2ηλ) is the form without momentum (β₁ = 0); with β₁ the update averages
(1 − β₁)/(1 + β₁) of its gradients' noise per step. β₂ does not appear: the model assumes v̂ tracks E[g²] (β₂ close
to 1, ε ≪ √v̂, the bias correction spent).

The model behind all three (Kosson et al.'s random walk): the gradients of successive steps are uncorrelated with mean
zero (noise dominates), the weight is scale-invariant, η and λ change slowly against the time to equilibrium, and
ηλ ≪ 1. Real gradients are correlated over a few steps and lr schedules move, so measured angles scatter around the
prediction; with a changing lr the measured angle lags behind the instantaneous prediction by about one relaxation
time. The deviation from equilibrium decays by a factor e every 1/rate steps: rate = 4ηλ/(1 − μ) for SGD (‖W‖⁴
relaxes, and θ ∝ 1/‖W‖²), 2ηλ for AdamW (‖W‖² relaxes, θ ∝ 1/‖W‖).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

Number = TypeVar("Number")  # a float, or a numpy array of them: every formula here is elementwise


@dataclass(frozen=True)
class Equilibrium:
    """The equilibrium of one optimiser: `angular_update(lr)` and `relaxation_rate(lr)` per step at that lr."""

    optimizer: Literal["sgd", "adamw"]
    weight_decay: float  # λ: SGD's L2 coefficient (through the gradient) or AdamW's decoupled weight_decay
    momentum: float  # SGD's μ, AdamW's β₁
    nesterov: bool = False  # SGD only

    @property
    def factor(self) -> float:
        """θ² / (2ηλ): what momentum does to the equilibrium angle."""
        mu = self.momentum
        if self.optimizer == "adamw":
            return (1 - mu) / (1 + mu)
        if self.nesterov:
            return (1 + 2 * mu - 2 * mu**3) / (1 + mu)
        return 1 / (1 + mu)

    def angular_update(self, lr: Number) -> Number:
        """The expected angle (radians) between W before and after one step at learning rate `lr`, in equilibrium."""
        return (2 * lr * self.weight_decay * self.factor) ** 0.5  # θ = √(2ηλ·factor)

    def relaxation_rate(self, lr: Number) -> Number:
        """The fraction of the distance to equilibrium one step at `lr` removes: its inverse is the steps per e-fold."""
        if self.optimizer == "adamw":
            return 2 * lr * self.weight_decay  # ‖W‖² ← (1 − ηλ)²‖W‖² + η²C
        return 4 * lr * self.weight_decay / (1 - self.momentum)  # ‖W‖⁴ relaxes at twice the decay ηλ/(1 − μ)

    def formula(self) -> str:
        """The prediction in words, for a figure or a page."""
        if self.optimizer == "adamw":
            return f"√(2ηλ·(1 − β₁)/(1 + β₁)), β₁ = {self.momentum:g}"
        if self.nesterov:
            return f"√(2ηλ·(1 + 2μ − 2μ³)/(1 + μ)), Nesterov μ = {self.momentum:g}"
        return f"√(2ηλ/(1 + μ)), μ = {self.momentum:g}"
