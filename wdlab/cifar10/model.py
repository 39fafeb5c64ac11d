"""The CIFAR-10 network: the ResNet-9 layout at a chosen width, seeded He initialisation, and its weight norms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wdlab import streams

LOGIT_SCALE = 0.125  # as in ResNet-9: keeps the initial logits small, so early steps stay stable


class ConvBlock(nn.Module):
    """3×3 conv → BatchNorm → ReLU, then 2×2 max-pooling when `pool`."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        # ReLU is monotone, so it commutes with max-pooling: pooling first gives the same values and gradients
        # with the ReLU on a quarter of the elements.
        return F.relu(F.max_pool2d(x, 2) if self.pool else x)


class Residual(nn.Module):
    """x + f(x), with f two conv blocks of the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.a = ConvBlock(channels, channels)
        self.b = ConvBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class ResNet(nn.Module):
    """The ResNet-9 layout of the fast DAWNBench CIFAR-10 entries, with `width` channels in its first layer.

    prep → layer1 (pool, residual) → layer2 (pool) → layer3 (pool, residual) → global max-pool → linear;
    channels w, 2w, 4w, 8w at 32, 16, 8, 4 pixels. Width 64 is the original ResNet-9 (94% with a long schedule).
    """

    def __init__(self, width: int, classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.prep = ConvBlock(3, width)
        self.layer1 = ConvBlock(width, 2 * width, pool=True)
        self.res1 = Residual(2 * width)
        self.layer2 = ConvBlock(2 * width, 4 * width, pool=True)
        self.layer3 = ConvBlock(4 * width, 8 * width, pool=True)
        self.res3 = Residual(8 * width)
        self.dropout = (
            nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        )  # on the pooled features, before the classifier
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(self.layer1(self.prep(x)))
        x = self.res3(self.layer3(self.layer2(x)))
        return self.head(self.dropout(x.amax(dim=(2, 3)))) * LOGIT_SCALE


def build_model(width: int, seed: int, dropout: float = 0.0) -> ResNet:
    """He-initialised from the init stream: every regulariser and strength starts from the same weights, so they
    alone explain the differences. Dropout has no parameters, so it leaves the state_dict's keys as they are."""
    model = ResNet(width, dropout=dropout)
    gen = streams.generator(seed, streams.CIFAR_INIT)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)  # std = √(2 / fan_in)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each conv and linear layer's weight, by layer name (e.g. 'res1.a', 'head'), from input to output. Every conv
    is followed by BatchNorm, so its weight is scale-invariant; the head's is not."""
    return {
        name.removesuffix(".conv"): module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def scale_invariant_layers(model: nn.Module) -> set[str]:
    """The layers a BatchNorm follows (every ConvBlock's conv): the loss sees only W/‖W‖, so weight decay sets their
    effective learning rate (wdlab.equilibrium)."""
    return {name for name, module in model.named_modules() if isinstance(module, ConvBlock)}


def layer_norms(model: nn.Module) -> dict[str, float]:
    """‖W‖₂ of each conv and linear layer's weight, by layer name."""
    return {name: weight.detach().float().norm().item() for name, weight in layer_weights(model).items()}


def zero_fraction(model: nn.Module) -> float:
    """The fraction of conv and linear weights that are exactly zero (L1's soft-threshold step makes them)."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return (sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)) if weights else 0.0


def total_norm(model: nn.Module) -> float:
    """‖θ‖₂ over every parameter of the model (weights, biases, BatchNorm scales and shifts)."""
    return torch.stack([p.detach().float().norm() for p in model.parameters()]).norm().item()


class ImageClassifier(nn.Module):
    """A trained net behind its own preprocessing, as MLflow serves it: uint8 images [N, 3, 32, 32] (RGB planes,
    0–255) in, class logits [N, 10] out."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) / self.std)  # x ← (x/255 − mean)/std, as in training
