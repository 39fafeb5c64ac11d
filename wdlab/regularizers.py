"""The regularisers, each defined once: its name and short labels, what its strength means, its step in both studies
and its exact reference in the synthetic one. How a page describes one is the page's template's (reports/templates/).

Every stage, report, check and test reads the list from `REGISTRY`; params.yaml gives each one its strength grids
(`synthetic.strengths.<name>`, `cifar10.strengths.<name>`). A new regulariser is a subclass here, registered below,
and its grids in params.yaml.

Notation: w the weights (conv/linear weights on CIFAR-10; the bias and norm parameters are never regularised unless
`cifar10.train.decay_norm_and_bias`), s the strength, η the step's learning rate, ∇L the data loss's gradient.
The synthetic study's loss is mean (ŷ − y)²/2, so an L2 penalty λ/2·‖w‖² has gradient λw.

torch is imported inside the hooks that draw random numbers, so that reading the names (settings validation) stays
light; every other hook uses tensor methods only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import torch


class Recipe(Protocol):
    """The optimiser settings a CIFAR-10 run's method line names (wdlab.settings.ImageTrain has them)."""

    lr: float
    adamw_lr: float
    momentum: float
    nesterov: bool


class Regularizer:
    """What a regulariser is. Hooks default to doing nothing, so a subclass states only what it changes."""

    name: ClassVar[str]  # its key in params.yaml, in file names and in MLflow
    title: ClassVar[str]  # in prose: "the L2 penalty"
    symbol: ClassVar[str] = "λ"  # what its strength is called
    strength_label: ClassVar[str]  # an axis label for its strength
    synthetic_meaning: ClassVar[str]  # what a strength of synthetic.strengths.<name> means
    cifar_meaning: ClassVar[str]  # what a strength of cifar10.strengths.<name> means
    exact: ClassVar[str]  # the name of the exact optimum its synthetic SGD approaches
    is_rate: ClassVar[bool] = False  # its strength is a rate in [0, 1)
    makes_exact_zeros: ClassVar[bool] = False  # its step sets weights to exactly 0
    streams: ClassVar[tuple[int, int] | None] = None  # its random streams (synthetic, CIFAR-10), see wdlab.streams

    # ── the synthetic study: one SGD step for every (seed, strength) at once ────────────────────────────────────
    # `concise_sgd`: synthetic.train.implementation = concise trains it with torch.optim.SGD(weight_decay=s)
    concise_sgd: ClassVar[bool] = False
    same_update_as: ClassVar[str | None] = None  # a regulariser whose plain-SGD update is the same one

    def loss_penalty(self, weight: torch.Tensor, strength: torch.Tensor) -> torch.Tensor | None:
        """A term added to the data loss before backpropagation, per model: weight [S, G, d] → [S, G]."""
        return None

    def decay(self, weight: torch.Tensor, lr: float, strength: torch.Tensor) -> None:
        """Applied to w in place before the gradient step (whose ∇L is at the old w)."""

    def project(self, weight: torch.Tensor, lr: float, strength: torch.Tensor) -> None:
        """Applied to w in place after the gradient step."""

    def training_inputs(
        self, xb: torch.Tensor, strength: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor | None:
        """The inputs each model trains on this step, xb [S, B, d] → [S, G, B, d]; None: xb itself."""
        return None

    def penalty(self, x_train: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """The term it adds to mean (ŷ − y)²/2, in expectation over its random draws: weight [S, ..., d] → [S, ...]."""
        raise NotImplementedError

    def reference(self, strength: float) -> tuple[str, float]:
        """Its exact optimum at `strength`: a solver of wdlab.synthetic.references and that solver's argument."""
        raise NotImplementedError

    def decay_rate(self, strength: float) -> float | None:
        """λ of the factor (1 − ηλ) its SGD step multiplies w by (in expectation); None: its step has no such factor.
        ηλ ≥ 1 flips w's sign every step."""
        return None

    # ── the CIFAR-10 study ───────────────────────────────────────────────────────────────────────────────────────
    optimizer: ClassVar[str] = "sgd"  # sgd (cifar10.train.lr) | adamw (cifar10.train.adamw_lr)
    zero_is_plain_sgd: ClassVar[bool] = True  # strength 0 trains exactly as l2 at λ = 0 does: they share that run

    def weight_decay(self, strength: float) -> float:
        """The optimiser's weight_decay on the decayed group."""
        return 0.0

    def dropout(self, strength: float) -> float:
        """The dropout rate before the classifier."""
        return 0.0

    def after_step(self, optimizer: torch.optim.Optimizer, strength: float) -> None:
        """Applied after each optimiser step."""

    def training_images(self, images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
        """The normalised batch the net trains on this step."""
        return images

    def cifar_method(self, train: Recipe) -> str:
        """How a run trains, for the CIFAR-10 study page's setup line."""
        return f"{sgd(train)}, {self.cifar_meaning}"


def sgd(train: Recipe) -> str:
    nesterov = "Nesterov " if train.nesterov and train.momentum > 0 else ""
    return f"SGD with {nesterov}momentum {train.momentum:g}, peak lr {train.lr:g}"


class L2(Regularizer):
    """λ/2·‖w‖² in the loss: w ← w − η·(∇L + λw); with momentum, λw passes through the velocity (coupled decay)."""

    name = "l2"
    title = "the L2 penalty"
    strength_label = "λ (L2 penalty)"
    synthetic_meaning = "λ of the penalty λ/2·‖w‖² added to the loss (coupled decay)"
    cifar_meaning = "λ of SGD's weight_decay: λ·w added to the gradient (coupled)"
    exact = "exact ridge"
    concise_sgd = True

    def loss_penalty(self, weight: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        return strength / 2 * (weight**2).sum(dim=-1)  # λ/2·‖w‖², differentiated with the data loss

    def penalty(self, x_train: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return strength / 2 * (weight**2).sum(dim=-1)

    def reference(self, strength: float) -> tuple[str, float]:
        return "ridge", strength

    def decay_rate(self, strength: float) -> float:
        return strength  # w ← (1 − ηλ)·w − η·∇L

    def weight_decay(self, strength: float) -> float:
        return strength

    def cifar_method(self, train: Recipe) -> str:
        return f"{sgd(train)}, weight decay added to the gradient (L2)"


class Decoupled(Regularizer):
    """Decay apart from the gradient step: w ← w − ηλ·w − η·∇L (SGD); AdamW's w ← (1 − ηλ)·w beside its adaptive
    step. For plain SGD the same update as l2; with momentum or Adam they part."""

    name = "decoupled"
    title = "decoupled weight decay"
    strength_label = "λ (decoupled decay)"
    synthetic_meaning = "λ of the decay w ← w − ηλ·w applied apart from the gradient step"
    cifar_meaning = "λ of AdamW's weight_decay: w ← (1 − ηλ)·w apart from the adaptive step"
    exact = "exact ridge"
    same_update_as = "l2"
    optimizer = "adamw"
    zero_is_plain_sgd = False  # AdamW, even at λ = 0

    def decay(self, weight: torch.Tensor, lr: float, strength: torch.Tensor) -> None:
        weight -= (lr * strength)[..., None] * weight  # w ← w − ηλ·w

    def penalty(self, x_train: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return strength / 2 * (weight**2).sum(dim=-1)

    def reference(self, strength: float) -> tuple[str, float]:
        return "ridge", strength

    def decay_rate(self, strength: float) -> float:
        return strength  # w ← (1 − ηλ)·w − η·∇L

    def weight_decay(self, strength: float) -> float:
        return strength

    def cifar_method(self, train: Recipe) -> str:
        return f"AdamW (decoupled weight decay, β₁ = {train.momentum:g}), peak lr {train.adamw_lr:g}"


class L1(Regularizer):
    """λ·‖w‖₁ by proximal SGD: the gradient step, then w ← sign(w)·max(|w| − ηλ, 0), which sets every weight that would
    cross zero to exactly zero (what plain subgradient SGD never does)."""

    name = "l1"
    title = "the L1 penalty"
    strength_label = "λ (L1 penalty)"
    synthetic_meaning = "λ of the penalty λ·‖w‖₁, applied by a proximal soft-threshold step"
    cifar_meaning = "λ of a soft-threshold step by lr·λ on conv/linear weights after each SGD step (L1, proximal)"
    exact = "exact lasso"
    makes_exact_zeros = True

    def project(self, weight: torch.Tensor, lr: float, strength: torch.Tensor) -> None:
        threshold = (lr * strength)[..., None]
        weight.copy_(weight.sign() * (weight.abs() - threshold).clamp_min(0))

    def penalty(self, x_train: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return strength * weight.abs().sum(dim=-1)

    def reference(self, strength: float) -> tuple[str, float]:
        return "lasso", strength

    def after_step(self, optimizer: torch.optim.Optimizer, strength: float) -> None:
        """The proximal operator of η_t·λ·‖w‖₁ on the decayed group after the optimiser's step: soft-thresholding."""
        if not strength:
            return
        for group in optimizer.param_groups:
            if group["name"] == "decay":
                threshold = group["lr"] * strength
                for param in group["params"]:
                    param.data.copy_(param.data.sign() * (param.data.abs() - threshold).clamp_min(0))

    def cifar_method(self, train: Recipe) -> str:
        return f"{sgd(train)}, then a soft-threshold step by lr·λ (L1, proximal)"


class Dropout(Regularizer):
    """Inverted dropout of rate p: the synthetic study's inputs x ⊙ m / (1 − p), m ~ Bernoulli(1 − p) fresh each
    step; on CIFAR-10, dropout on the pooled features before the classifier. In expectation over the masks the
    synthetic objective is a ridge with one weight per feature (Wager, Wang & Liang 2013)."""

    name = "dropout"
    title = "dropout"
    symbol = "p"
    strength_label = "dropout rate p"
    synthetic_meaning = "input dropout rate p (inverted: kept inputs scaled by 1/(1 − p)), each in [0, 1)"
    cifar_meaning = "dropout of rate p before the classifier, each in [0, 1)"
    exact = "per-feature ridge (dropout in expectation)"
    is_rate = True
    streams = (5, 16)

    def training_inputs(
        self, xb: torch.Tensor, strength: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        import torch

        keep = 1 - strength  # [G]
        shape = (len(keep), *xb.shape[1:])  # per seed: [G, B, d]
        masks = torch.stack([torch.rand(shape, generator=gen, dtype=xb.dtype) for gen in generators]).to(xb.device)
        return xb[:, None] * (masks < keep[:, None, None]) / keep[:, None, None]  # [S, G, B, d]

    def penalty(self, x_train: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
        scale = dropout_scales(x_train, strength).to(weight.dtype)  # [S, d]
        return 0.5 * (scale.view(scale.shape[0], *[1] * (weight.dim() - 2), -1) * weight**2).sum(dim=-1)

    def reference(self, strength: float) -> tuple[str, float]:
        return "dropout_ridge", strength

    def dropout(self, strength: float) -> float:
        return strength

    def cifar_method(self, train: Recipe) -> str:
        return f"{sgd(train)}, dropout of rate p before the classifier"


class InputNoise(Regularizer):
    """Training with noise (Bishop 1995): each step, every training input gets fresh N(0, σ²) noise on each feature
    (on CIFAR-10, on each pixel of the normalised batch). For squared loss its expected objective is exactly ridge:
    E[(w·(x + σε) + b − y)²/2] = (w·x + b − y)²/2 + σ²/2·‖w‖², so under the λ/2·‖w‖² convention λ = σ²."""

    name = "noise"
    title = "Gaussian input noise"
    symbol = "σ"
    strength_label = "input noise σ"
    synthetic_meaning = "std σ of Gaussian noise added to every input feature, fresh each step (ridge at λ = σ²)"
    cifar_meaning = "std σ of Gaussian noise added to every normalised pixel of the training batch, fresh each step"
    exact = "ridge at λ = σ² (noise in expectation)"
    streams = (6, 17)

    def training_inputs(
        self, xb: torch.Tensor, strength: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        import torch

        shape = (len(strength), *xb.shape[1:])  # per seed: [G, B, d]
        noise = torch.stack([torch.randn(shape, generator=gen, dtype=xb.dtype) for gen in generators]).to(xb.device)
        return xb[:, None] + strength[:, None, None] * noise  # x + σε: [S, G, B, d]

    def penalty(self, x_train: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return strength**2 / 2 * (weight**2).sum(dim=-1)

    def reference(self, strength: float) -> tuple[str, float]:
        return "ridge", strength**2

    def decay_rate(self, strength: float) -> float:
        return strength**2  # in expectation, ridge at λ = σ²

    def training_images(self, images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
        if not strength:
            return images
        import torch

        noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)  # the CPU stream, on any device
        noisy = images.clone()  # keeps the batch's memory format
        return noisy.add_(noise.to(images.device, images.dtype), alpha=strength)

    def cifar_method(self, train: Recipe) -> str:
        return f"{sgd(train)}, Gaussian noise of std σ on every normalised input pixel"


def dropout_scales(x_train: torch.Tensor, rate: float) -> torch.Tensor:
    """c_j = p/(1 − p)·mean_i x_ij²: input dropout of rate p adds ½·Σ_j c_j·w_j² to the expected loss, [S, d].

    With x̃_j = x_j·m_j/(1 − p), E[x̃_j] = x_j and Var[x̃_j] = x_j²·p/(1 − p), so
    E[(w·x̃ + b − y)²/2] = (w·x + b − y)²/2 + ½·Σ_j w_j²·x_j²·p/(1 − p); averaging over samples gives c_j.
    """
    x = x_train.double()
    return rate / (1 - rate) * (x**2).mean(dim=-2)


def sharing_baseline_zero(names: Sequence[str]) -> list[str]:
    """Of `names`, the regularisers whose strength 0 trains exactly as the baseline's λ = 0: they share that run."""
    return [name for name in names if name != BASELINE and REGISTRY[name].zero_is_plain_sgd]


def zero_makers() -> list[str]:
    """The regularisers whose step sets weights to exactly zero."""
    return [name for name, regularizer in REGISTRY.items() if regularizer.makes_exact_zeros]


BASELINE = L2.name  # strength 0 of it is no regularisation at all: the run the others are compared with

REGISTRY: dict[str, Regularizer] = {r.name: r for r in (L2(), Decoupled(), L1(), Dropout(), InputNoise())}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Regularizer:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown regulariser {name!r}: one of {', '.join(NAMES)}") from None
