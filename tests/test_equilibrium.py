"""The rotational equilibrium as a test: a scale-invariant layer trained on noise settles at the angle per step that
wdlab.equilibrium predicts, for SGD with momentum (heavy ball and Nesterov) and for AdamW; without weight decay it
does not settle, and the same check fails. Also: the angle measurement itself, against float64 arccos."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlab.equilibrium import Equilibrium
from wdlab.executor import torch_threads
from wdlab.rotation import AngularUpdates, triangle_angle

D_IN, D_OUT, BATCH = 64, 16, 32  # 1,024 weights: 16 rows, each scale-invariant under BatchNorm
SETTLE, MEASURE, BLOCKS = 1000, 1000, 10  # steps to equilibrium, steps measured, blocks for the standard error

SGD = Equilibrium("sgd", weight_decay=5e-3, momentum=0.9)  # at lr 0.1: θ* = 0.0229 rad, 20 e-folds in SETTLE steps
NESTEROV = Equilibrium("sgd", weight_decay=5e-3, momentum=0.9, nesterov=True)  # θ* = 0.0266
ADAMW = Equilibrium("adamw", weight_decay=1.0, momentum=0.9)  # at lr 0.01: θ* = 0.0324, 20 e-folds
LR = {"sgd": 0.1, "adamw": 0.01}


@pytest.fixture(autouse=True)
def one_thread():
    """Steps this small gain nothing from a second thread, and on a loaded machine threads wait on each other."""
    with torch_threads(1):
        yield


def angles_per_step(equilibrium: Equilibrium, steps: int = SETTLE + MEASURE, seed: int = 0) -> torch.Tensor:
    """Train Linear(64 → 16) → BatchNorm (no affine) on fresh Gaussian inputs and random labels at a constant lr:
    the loss sees only each row's direction, and the gradients are noise. Returns the angle of every step."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(D_IN, D_OUT, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(D_OUT, D_IN, generator=gen) / math.sqrt(D_IN))
    norm = nn.BatchNorm1d(D_OUT, affine=False)
    lr, decay = LR[equilibrium.optimizer], equilibrium.weight_decay
    if equilibrium.optimizer == "adamw":
        optimizer = torch.optim.AdamW([layer.weight], lr=lr, betas=(equilibrium.momentum, 0.999), weight_decay=decay)
    else:
        optimizer = torch.optim.SGD(
            [layer.weight], lr=lr, momentum=equilibrium.momentum, nesterov=equilibrium.nesterov, weight_decay=decay
        )
    rotation = AngularUpdates({"layer": layer.weight})
    angles = []
    for _ in range(steps):
        inputs = torch.randn(BATCH, D_IN, generator=gen)
        labels = torch.randint(0, D_OUT, (BATCH,), generator=gen)
        loss = F.cross_entropy(norm(layer(inputs)), labels)
        optimizer.zero_grad()
        loss.backward()
        rotation.before_step()
        optimizer.step()
        rotation.after_step()
        angles.append(rotation.epoch_means()["layer"])  # one step per "epoch": every step's angle
    return torch.tensor(angles, dtype=torch.float64)


def tolerance(angles: torch.Tensor, equilibrium: Equilibrium) -> float:
    """How far (relative) the measured RMS angle may sit from θ*, derived, not tuned:

    - noise: 3 standard errors of the RMS, from the spread of BLOCKS block RMS values (blocks of 100 steps are
      ~10× longer than momentum's memory, 1/(1 − 0.9), so they are close to independent);
    - the discrete step: the balance (1 − ηλ)² ≈ 1 − 2ηλ drops a term of relative size ηλ/2 in θ², ηλ/4 in θ;
    - the relaxation left after SETTLE steps: e^(−rate·SETTLE) of the initial distance.
    The RMS, not the mean, is compared: θ* is √E[θ²] in the model, and the two differ by Var(θ)/2θ².
    """
    blocks = angles.view(BLOCKS, -1).pow(2).mean(dim=1).sqrt()
    noise = 3 * blocks.std().item() / math.sqrt(BLOCKS) / blocks.mean().item()
    lr = LR[equilibrium.optimizer]
    return noise + lr * equilibrium.weight_decay / 4 + math.exp(-equilibrium.relaxation_rate(lr) * SETTLE)


def rms(angles: torch.Tensor) -> float:
    return angles.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("equilibrium", [SGD, NESTEROV, ADAMW], ids=["sgd-momentum", "sgd-nesterov", "adamw"])
def test_a_scale_invariant_layer_settles_at_the_predicted_angle(equilibrium):
    measured = angles_per_step(equilibrium)[SETTLE:]
    predicted = equilibrium.angular_update(LR[equilibrium.optimizer])
    error, allowed = abs(rms(measured) / predicted - 1), tolerance(measured, equilibrium)
    assert error <= allowed, f"RMS angle {rms(measured):.5f} vs θ* {predicted:.5f}: {error:.2%} > {allowed:.2%}"
    assert allowed < 0.05, "the check is tight enough to tell the formulas apart (Nesterov's is 16 % above SGD's)"


@pytest.mark.parametrize("equilibrium", [SGD, ADAMW], ids=["sgd-momentum", "adamw"])
def test_without_decay_the_angle_keeps_falling_and_the_same_check_fails(equilibrium):
    """λ = 0, all else equal: ‖W‖ only grows, so the angle per step keeps shrinking (∝ 1/‖W‖² for SGD, 1/‖W‖ for
    AdamW) instead of settling, and the check above, against the λ > 0 prediction, fails."""
    undecayed = Equilibrium(equilibrium.optimizer, 0.0, equilibrium.momentum, equilibrium.nesterov)
    angles = angles_per_step(undecayed)
    measured = angles[SETTLE:]
    predicted = equilibrium.angular_update(LR[equilibrium.optimizer])
    assert abs(rms(measured) / predicted - 1) > tolerance(measured, equilibrium)
    assert rms(measured) < predicted / 3, "far below the decayed equilibrium, not near it"
    quarters = [rms(quarter) for quarter in angles.chunk(4)]
    assert quarters == sorted(quarters, reverse=True), f"falls from each quarter of the run to the next: {quarters}"
    assert undecayed.angular_update(LR[equilibrium.optimizer]) == 0.0


def test_the_formulas_reduce_to_each_other():
    """Without momentum the three are one: θ* = √(2ηλ); heavy-ball momentum μ divides θ*² by 1 + μ (Kosson et
    al.), AdamW's β₁ multiplies it by (1 − β₁)/(1 + β₁)."""
    for optimizer, nesterov in (("sgd", False), ("sgd", True), ("adamw", False)):
        assert Equilibrium(optimizer, 0.5, 0.0, nesterov).angular_update(0.02) == pytest.approx(
            math.sqrt(2 * 0.02 * 0.5)
        )
    assert SGD.angular_update(0.1) == pytest.approx(math.sqrt(2 * 0.1 * 5e-3 / 1.9))
    assert ADAMW.angular_update(0.01) == pytest.approx(math.sqrt(2 * 0.01 * 1.0 * 0.1 / 1.9))
    assert NESTEROV.angular_update(0.1) / SGD.angular_update(0.1) == pytest.approx(1.158, abs=1e-3)
    assert SGD.relaxation_rate(0.1) == pytest.approx(0.02) and ADAMW.relaxation_rate(0.01) == pytest.approx(0.02)


@pytest.mark.parametrize("angle", [1e-6, 1e-4, 1e-2, 0.5, 2.5])
@pytest.mark.parametrize("stretch", [1.0, 1.3, 0.7])
def test_the_angle_is_exact_from_the_three_norms(angle, stretch):
    """Two float32 vectors at a known angle, the second also stretched: the angle from ‖u‖, ‖v‖ and ‖v − u‖ (norms
    summed in float64, as the trainer does) matches the float64 angle between them to 1e-6 relative or 1e-9 rad,
    where arccos of the float32 cosine reads 0 below ~3e-4 rad."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(10_000, generator=gen, dtype=torch.float64)
    orthogonal = torch.randn(10_000, generator=gen, dtype=torch.float64)
    orthogonal -= (orthogonal @ u) / (u @ u) * u
    orthogonal *= u.norm() / orthogonal.norm()
    v = stretch * (math.cos(angle) * u + math.sin(angle) * orthogonal)
    u32, v32 = u.float(), v.float()
    norms = torch._foreach_norm([u32, v32, v32 - u32], 2, dtype=torch.float64)
    # the angle between the float32 vectors themselves, in float64 via the orthogonal part (no cancellation)
    a, b = u32.double(), v32.double()
    exact = math.atan2((b - (a @ b) / (a @ a) * a).norm().item(), ((a @ b) / a.norm()).item())
    # 1e-9 rad: the float32 difference v − u rounds at ~1e-8·‖u‖ where a stretch, not the turn, makes most of it
    assert triangle_angle(*norms).item() == pytest.approx(exact, rel=1e-6, abs=1e-9)


def test_angular_updates_average_each_step_and_start_over():
    weight = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    rotation = AngularUpdates({"w": weight})
    turns = [0.1, 0.3]
    for turn in turns:  # rotate the flattened weight (1, 0, 0, 2) towards (0, 1, 0, 0) by `turn`
        rotation.before_step()
        with torch.no_grad():
            flat = weight.view(-1)
            direction, side = flat / flat.norm(), torch.tensor([0.0, 1.0, 0.0, 0.0])
            side -= (side @ direction) * direction
            flat.copy_(flat.norm() * (math.cos(turn) * direction + math.sin(turn) * side / side.norm()))
        rotation.after_step()
    assert rotation.epoch_means()["w"] == pytest.approx(sum(turns) / 2, rel=1e-6)
    assert math.isnan(rotation.epoch_means()["w"]), "no step since the last call"
