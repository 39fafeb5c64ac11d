"""The architecture axis of the CIFAR-10 study: the reference's plain CNN beside the BatchNorm ResNet, its size, what
scale-invariance means for each, and that it trains through the same code as the ResNet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from stages import check, compare_architectures, train_images
from tests.helpers.cifar import CPU, coloured_splits, tiny_settings
from tests.helpers.pages import table_rows
from wdlab.cifar10 import architectures
from wdlab.cifar10 import data as cifar_data
from wdlab.cifar10 import model as cifar_model
from wdlab.cifar10.grid import RunSpec, train_run
from wdlab.datasets.registry import get as get_dataset
from wdlab.errors import StageError
from wdlab.workspace import ROOT

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
    assert train_images.grid_strengths(study, "l2", "plain") == (0, 0.01)
    assert train_images.grid_strengths(study, "l2", "resnet") == study.strengths.l2
    for run in ("headline", "dropout"):
        with pytest.raises(StageError, match=r"L2 grid only \(<study>.plain.l2\)"):
            train_images.grid_strengths(study, run, "plain")
    assert train_images.stage_name("plain") == "train_images_plain" and train_images.stage_name("resnet") == (
        "train_images"
    )
    args = train_images.parser().parse_args(
        ["l2", "--architecture", "plain", "--study", "cifar10", "--data", "d", "--out", "o"]
    )
    assert (
        args.architecture == "plain"
        and train_images.parser().parse_args(["l2", "--study", "cifar10", "--data", "d", "--out", "o"]).architecture
        == "resnet"
    )


# ── the page turns with its records ────────────────────────────────────────────────────────────────

LAYERS = {
    "plain": (["conv1", "conv2", "fc1", "fc2"], set()),
    "resnet": (["prep", "layer1", "head"], {"prep", "layer1"}),
}


def made_up_grid(
    net: str, *, train_fall: float, test_gain: float, scatter: float = 0.0, seeds: int = 3
) -> architectures.Grid:
    """A net's grid on {0, 0.05} whose final rows are set by the arguments: at λ = 0.05 train accuracy falls by
    `train_fall` and test (and validation) accuracy rises by `test_gain` on every seed, give or take `scatter` times
    (+3, −2, −1) seed by seed; every layer's ‖W‖ halves. Each seed's numbers differ a little, as seeds do."""
    layers, invariant = LAYERS[net]
    rows = []
    for strength in (0.0, 0.05):
        strong = strength > 0
        for seed in range(seeds):
            jitter = 0.004 * (seed - 1) + 0.001 * seed**2  # a spread that the shared seeds' pairing takes out
            train = 0.95 - train_fall * strong + jitter
            test = 0.60 + (test_gain + scatter * (3, -2, -1)[seed]) * strong + jitter
            rows.append(
                {"lambda": strength, "seed": seed, "diverged": 0, "epochs_run": 3}
                | {"train_accuracy": train, "valid_accuracy": test, "test_accuracy": test, "gap_accuracy": train - test}
                | {"train_loss": 0.2, "valid_loss": 1.0, "test_loss": 1.0, "gap_loss": 0.8, "zero_fraction": 0.0}
                | {"w_norm": (20.0 + seed) * (0.5 if strong else 1.0)}
                | {architectures.LAYER + layer: (4.0 + seed) * (0.5 if strong else 1.0) for layer in layers}
            )
    return architectures.summarise(net, pd.DataFrame(rows), layers, invariant, Path("run.json"))


def architectures_page(seeds: int = 3, **resnet) -> tuple[str, dict]:
    grids = {
        "resnet": made_up_grid("resnet", seeds=seeds, **({"train_fall": 0.0, "test_gain": 0.02} | resnet)),
        "plain": made_up_grid("plain", train_fall=0.1, test_gain=0.03, seeds=seeds),
    }
    strengths = {"resnet": (0.0, 0.05), "plain": (0.0, 0.05)}
    metrics = architectures.grid_metrics(grids["plain"], 3) | {
        "dataset": get_dataset("cifar10").source_record(None),
        "findings": architectures.claims(grids, strengths),
    }
    page = compare_architectures.render_page(
        ROOT / "reports/templates/architectures_images.md.j2",
        metrics,
        grids,
        tiny_settings(),
        "cifar10",
        ["figures/a.png"],
    )
    return page, metrics["findings"]


def bullet(page: str, net: str) -> str:
    """A net's bullet of the page's finding, its continuation line included."""
    return page.split(f"- **{net}**")[1].split("\n- ")[0].split("\n\n")[0]


def test_the_page_says_lambda_limits_the_resnet_only_when_its_train_accuracy_falls():
    kept, found = architectures_page(train_fall=0.0)
    assert found["resnet"]["capacity"]["limits"] is False and found["plain"]["capacity"]["limits"] is True
    assert found["contrast"]["capacity_limited"] == "plain" and found["contrast"]["mechanisms_differ"] is True
    resnet = bullet(kept, "ResNet (BatchNorm)")
    assert (
        "stays: 95.2 % ± 0.6 at λ = 0, 95.2 % ± 0.6 at λ = 0.05" in resnet and "λ does not limit what it fits" in kept
    )
    assert "falls from 95.2 % ± 0.6 to 85.2 % ± 0.6" in kept, "the plain CNN's train accuracy falls by 10 points"
    assert "lowers the plain CNN's training accuracy and not the ResNet's" in kept
    assert "leaves the ResNet, whose norms fall without limiting it" in kept and "limits the ResNet too" not in kept
    assert "effective learning rate η/‖W‖² grows 4.0×" in kept, "‖W‖ halved: η/‖W‖² four times as large"
    assert "the other layers' (head) at 50%" in kept and "every layer's ‖W‖ ends at 50% of λ = 0's" in kept
    assert "picks λ = 0.05, the grid's largest" in resnet and "higher than at λ = 0 (Δ +2.0 points" in resnet

    limited, found = architectures_page(train_fall=0.1)
    assert found["resnet"]["capacity"]["limits"] is True and found["contrast"]["capacity_limited"] == "resnet, plain"
    assert "lowers the training accuracy of both nets: it limits the ResNet too" in limited
    assert "λ does not limit what it fits" not in limited and "whose norms fall without limiting it" not in limited
    assert limited.count("λ limits what it fits") == 2


def test_the_page_claims_no_gain_the_paired_interval_does_not_show():
    scattered, found = architectures_page(test_gain=0.002, scatter=0.01)
    resnet = bullet(scattered, "ResNet (BatchNorm)")
    assert found["resnet"]["chosen"]["strength"] == 0.05 and found["resnet"]["gain"]["verdict"] == "indistinguishable"
    assert "its test accuracy is not distinguishable from λ = 0's (Δ +0.2 points" in resnet
    assert "higher than at λ = 0" not in resnet
    worse, found = architectures_page(test_gain=-0.02)
    resnet = bullet(worse, "ResNet (BatchNorm)")
    assert found["resnet"]["chosen"] == {"strength": 0.0, "edge": "smallest"}
    assert "picks λ = 0, the grid's smallest" in resnet and "so there is no gain over λ = 0 to claim" in resnet
    assert "higher than at λ = 0" not in resnet and "narrower" not in resnet
    one_seed, found = architectures_page(seeds=1, train_fall=0.1)
    assert found["resnet"]["gain"]["verdict"] == "one seed" and found["resnet"]["capacity"]["limits"] is False
    assert found["contrast"]["unjudged"] == "resnet, plain" and not found["contrast"]["mechanisms_differ"]
    assert one_seed.count("one seed cannot tell whether λ limits what it fits") == 2
    assert "its test accuracy is not judged, one seed giving no interval (Δ +2.0 points)" in one_seed
    assert "whether λ limits what each net fits stays open" in one_seed and ": λ limits what it fits." not in one_seed
    assert "neither net" not in one_seed and "does not limit" not in one_seed


def test_the_pages_tables_hold_a_row_per_net_and_strength():
    page, _ = architectures_page()
    rows = table_rows(page)
    assert [row[:2] for row in rows if row[0] in ("Plain CNN", "ResNet (BatchNorm)")] == [
        ["ResNet (BatchNorm)", "0"],
        ["ResNet (BatchNorm)", "0.05"],
        ["Plain CNN", "0"],
        ["Plain CNN", "0.05"],
    ]
    assert ["head", "no", "5 ± 1", "2.5 ± 0.5"] in rows and ["prep", "yes", "5 ± 1", "2.5 ± 0.5"] in rows


def test_checks_yaml_guards_every_finding_of_the_plain_study_with_its_kind():
    _, found = architectures_page(test_gain=0.002, scatter=0.01)
    metrics = architectures.grid_metrics(made_up_grid("plain", train_fall=0.1, test_gain=0.03), 3) | {"findings": found}
    rules = check.load_checks(ROOT / "checks.yaml")["studies"]["cifar10_plain"]["tolerances"]
    tolerances = check.calibrate(metrics, rules, 3)  # refuses a metric no rule matches
    kinds = {name: entry["kind"] for name, entry in tolerances.items()}
    assert kinds["findings.resnet.chosen.strength"] == "choice" and kinds["findings.plain.gain.verdict"] == "skip"
    assert tolerances["findings.resnet.gain.mean"]["at"] == "findings.resnet.chosen.strength"
    assert (
        kinds["findings.plain.norms.layers.fc1.mean"] == "mean" and kinds["findings.resnet.scale_invariant"] == "exact"
    )
    assert (
        kinds["findings.plain.capacity.train_accuracy.mean"] == "mean" and kinds["grid.lambda_0.w_norm.mean"] == "mean"
    )
    assert tolerances["findings.resnet.scores.lambda_0.valid_accuracy.mean"]["kind"] == "mean"
