"""The CIFAR-10 networks: the ResNet-9 layout at a chosen width (BatchNorm after every conv) and the reference
material's plain CNN (no normalisation), seeded He initialisation, and their weight norms. Input channels, image
side and classes default to CIFAR-10's and come from the data's definition otherwise (wdlab/datasets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from wdlab import streams

if TYPE_CHECKING:
    from wdlab.settings import ImageStudy

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
    The global pool takes any side of at least 8 pixels (three 2×2 pools).
    """

    def __init__(self, width: int, classes: int = 10, dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        self.prep = ConvBlock(in_channels, width)
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


class PlainCNN(nn.Module):
    """The reference material's CIFAR-10 net, without normalisation: 5×5 conv → ReLU → 2×2 max-pool, twice, then a
    hidden linear layer and the classifier. Nothing here is scale-invariant: multiplying a layer's weights by c
    multiplies what follows, so weight decay limits the function itself. `channels` = 64, `hidden` = 128 is the
    reference's size; its printed flatten size, 64·28·28, is wrong: 32 → 28 → 14 → 10 → 5 gives 64·5·5 = 1,600.
    """

    def __init__(self, channels: int = 64, hidden: int = 128, classes: int = 10, in_channels: int = 3, side: int = 32):
        super().__init__()
        self.side = plain_cnn_side(side)
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=5)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=5)
        self.fc1 = nn.Linear(channels * self.side * self.side, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU commutes with max-pooling (both monotone): pooling first is the same net, with the ReLU on a quarter
        # of the elements.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def plain_cnn_side(side: int) -> int:
    """Pixels per side after the plain CNN's two 5×5 conv + 2×2 pool stages: s ← ⌊(s − 4) / 2⌋, twice."""
    after = ((side - 4) // 2 - 4) // 2
    if after < 1:
        raise ValueError(f"the plain CNN needs images of at least 16 pixels a side, not {side}")
    return after


ARCHITECTURES = ("resnet", "plain")  # resnet: cifar10.model, cifar10.train; plain: cifar10.plain.model, .train


def net_shape(study: ImageStudy, architecture: str) -> dict[str, Any]:
    """What rebuilds a net of `architecture` (make_net), as checkpoints and MLflow params record it: the ResNet's
    {"width"}, as before there was a choice of net; the plain CNN's {"architecture": "plain", "channels", "hidden"}."""
    if architecture == "plain":
        return {"architecture": "plain"} | study.plain.model.model_dump()
    return study.model.model_dump()


def make_net(shape: Mapping[str, Any], dropout: float = 0.0) -> nn.Module:
    """An untrained net of `shape` (net_shape's, or a checkpoint's: one without "architecture" is a ResNet), for the
    data of its "in_channels", "side" and "classes" (a dataset's `net_inputs()`; CIFAR-10's where absent)."""
    data = {"in_channels": shape.get("in_channels", 3), "classes": shape.get("classes", 10)}
    if shape.get("architecture", "resnet") == "plain":
        if dropout:
            raise ValueError("the plain CNN has no dropout layer: train it with l2")
        return PlainCNN(shape["channels"], shape["hidden"], side=shape.get("side", 32), **data)
    return ResNet(shape["width"], dropout=dropout, **data)


def build_model(width: int, seed: int, dropout: float = 0.0) -> ResNet:
    """The ResNet of `width`, initialised as build_net does."""
    return build_net({"width": width}, seed, dropout)


def build_net(shape: Mapping[str, Any], seed: int, dropout: float = 0.0) -> nn.Module:
    """He-initialised from the init stream: every regulariser and strength starts from the same weights, so they
    alone explain the differences. Dropout has no parameters, so it leaves the state_dict's keys as they are."""
    model = make_net(shape, dropout)
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
    """The layers (as layer_norms names them) whose weight BatchNorm follows: the net's output does not change when
    such a weight is multiplied by c > 0, so weight decay there sets its effective learning rate, ≈ η/‖W‖², rather
    than the function's scale. The ResNet's convs; none of the plain CNN's layers."""
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
    """A trained net behind its own preprocessing, as MLflow serves it: uint8 images [N, C, H, W] (for CIFAR-10
    [N, 3, 32, 32], the RGB planes, 0–255) in, class logits [N, classes] out; C is the number of `mean` values."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) / self.std)  # x ← (x/255 − mean)/std, as in training
