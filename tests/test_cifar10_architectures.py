"""The architecture axis of the CIFAR-10 study: the reference's plain CNN beside the BatchNorm ResNet, its size, what
scale-invariance means for each, and that it trains through the same code as the ResNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages import train_cifar10
from tests.helpers.cifar import CPU, coloured_splits, tiny_settings
from wdlab.cifar10 import data as cifar_data
from wdlab.cifar10 import model as cifar_model
from wdlab.cifar10.grid import RunSpec, train_run
from wdlab.errors import StageError

REFERENCE = {"architecture": "plain", "channels": 64, "hidden": 128}  # the reference material's net


def test_the_reference_size_flattens_to_64_by_5_by_5():
    """32 → 28 (5×5 conv) → 14 (pool) → 10 (conv) → 5 (pool): 64·5·5 = 1,600, not the 64·28·28 printed there."""
    net = cifar_model.make_net(REFERENCE)
    seen = {}
    net.fc1.register_forward_hook(lambda module, inputs, output: seen.update(flat=inputs[0].shape))
    logits = net(torch.zeros(2, 3, 32, 32))
    assert seen["flat"] == (2, 1600) and net.fc1.in_features == 1600 and logits.shape == (2, 10)
    assert [name for name, _ in net.named_children()] == ["conv1", "conv2", "fc1", "fc2"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "no normalisation anywhere"
    assert cifar_model.make_net({"architecture": "plain", "channels": 8, "hidden": 16}).fc1.in_features == 8 * 25


@pytest.mark.parametrize("shape", [{"width": 4}, {"architecture": "plain", "channels": 4, "hidden": 16}])
def test_only_the_weights_batchnorm_follows_are_scale_invariant(shape):
    """Scaling a layer's weight by 3 leaves the output unchanged exactly for the layers scale_invariant_layers names:
    every conv of the ResNet (BatchNorm after it), none of the plain CNN's layers and not the ResNet's head."""
    net = cifar_model.build_net(shape, seed=0).double().train()  # train mode: BatchNorm uses the batch's statistics
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layers = dict(
        (name.removesuffix(".conv"), module)
        for name, module in net.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    )
    invariant = cifar_model.scale_invariant_layers(net)
    assert set(invariant) <= set(layers) and list(layers) == list(cifar_model.layer_norms(net))
    with torch.no_grad():
        before = net(x)
        for name, layer in layers.items():
            layer.weight.mul_(3.0)
            after = net(x)
            layer.weight.div_(3.0)
            change = ((after - before).abs().max() / before.abs().max()).item()
            # BatchNorm's ε in √(σ² + ε) leaves ~1e-7 of the scale; a layer that is not invariant moves by ~1
            assert change < 1e-5 if name in invariant else change > 1e-2, f"{name}: scaling by 3 moved {change:.2g}"
    if "width" in shape:
        assert invariant == {name for name in layers if name != "head"}
    else:
        assert invariant == set()


def test_initialisation_is_seeded_and_the_resnet_builds_as_before():
    plain = {"architecture": "plain", "channels": 4, "hidden": 16}
    first, again, other = (cifar_model.build_net(plain, seed) for seed in (0, 0, 1))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert not torch.equal(first.conv1.weight, other.conv1.weight)
    assert (first.conv1.bias == 0).all()
    assert first.conv1.weight.std().item() == pytest.approx((2 / 75) ** 0.5, rel=0.2)  # He: √(2 / fan_in)
    resnet, direct = cifar_model.build_model(4, seed=0), cifar_model.build_net({"width": 4}, seed=0)
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in resnet.state_dict().items())
    with pytest.raises(ValueError, match="no dropout"):
        cifar_model.make_net(plain, dropout=0.5)


def test_net_shape_keeps_the_resnets_record_and_names_the_plain_net():
    study = tiny_settings(**{"cifar10.plain.model.channels": 6}).cifar10
    assert cifar_model.net_shape(study, "resnet") == {"width": 8}, "the ResNet's checkpoints and params as before"
    assert cifar_model.net_shape(study, "plain") == {"architecture": "plain", "channels": 6, "hidden": 128}
    plain = study.for_architecture("plain")
    assert plain.train == study.plain.train and plain.data == study.data and study.for_architecture("resnet") is study


@pytest.fixture(scope="module")
def splits() -> cifar_data.Splits:
    return coloured_splits()


def test_a_run_spec_trains_the_plain_net_and_l2_shrinks_its_every_layer(splits):
    settings = tiny_settings(
        **{
            "cifar10.plain.model.channels": 4,
            "cifar10.plain.model.hidden": 32,
            "cifar10.plain.train.epochs": 2,
            "cifar10.plain.train.batch_size": 16,
            "cifar10.plain.train.lr": 0.05,
            "cifar10.plain.train.mixed_precision": False,
        }
    )
    study = settings.cifar10.for_architecture("plain")
    free, decayed = (train_run(RunSpec(study, "l2", strength, 0, CPU.type, "plain"), splits) for strength in (0, 0.1))
    assert set(free.state_dict) == {
        f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")
    }
    assert free.diverged_epoch is None and len(free.history) == 3 and free.final["test_accuracy"] > 0.3
    assert free.history[0] == decayed.history[0], "the same initial net: λ is the only difference"
    assert all(decayed.layer_norms[-1][layer] < norm for layer, norm in free.layer_norms[-1].items())


def test_the_training_stage_trains_the_plain_net_over_its_l2_grid_only():
    study = tiny_settings(**{"cifar10.plain.l2": [0, 0.01]}).cifar10
    assert train_cifar10.grid_strengths(study, "l2", "plain") == (0, 0.01)
    assert train_cifar10.grid_strengths(study, "l2", "resnet") == study.strengths.l2
    for run in ("headline", "dropout"):
        with pytest.raises(StageError, match=r"L2 grid only \(cifar10.plain.l2\)"):
            train_cifar10.grid_strengths(study, run, "plain")
    assert train_cifar10.stage_name("plain") == "train_cifar10_plain" and train_cifar10.stage_name("resnet") == (
        "train_cifar10"
    )
    args = train_cifar10.parser().parse_args(["l2", "--architecture", "plain", "--data", "d", "--out", "o"])
    assert (
        args.architecture == "plain"
        and train_cifar10.parser().parse_args(["l2", "--data", "d", "--out", "o"]).architecture == "resnet"
    )
