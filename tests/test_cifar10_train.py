"""CIFAR-10 training: the net learns, runs repeat exactly, augmentation is right, λ shrinks weights, divergence is
survived."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import mlflow
import mlflow.pytorch
import pandas as pd
import pytest
import torch
from torch import nn

from stages import compare_regularizers, evaluate_images, report_images, train_images
from tests.helpers.cifar import CLASSES, CPU, coloured_splits, tiny_settings
from tests.helpers.pages import table_rows
from tests.helpers.stages import stage_args
from wdlab import regularizers, results
from wdlab.cifar10 import data as cifar_data
from wdlab.cifar10 import findings as cifar_findings
from wdlab.cifar10 import model as cifar_model
from wdlab.cifar10 import summary
from wdlab.cifar10 import training as cifar_training
from wdlab.cifar10.archive import Cifar10, save_cifar10
from wdlab.device import cpu_has_bf16, device_formats
from wdlab.files import RunFolder
from wdlab.lineage import content_digest
from wdlab.settings import REGULARIZERS, Settings
from wdlab.tracking import run_filter
from wdlab.workspace import ROOT


@pytest.fixture(scope="module")
def splits() -> cifar_data.Splits:
    return coloured_splits()


def train(
    splits: cifar_data.Splits, settings: Settings, weight_decay: float = 5e-4, regularizer: str = "l2"
) -> cifar_training.RunResult:
    formats = device_formats(CPU, settings.cifar10.train.mixed_precision)
    return cifar_training.train(splits, settings.cifar10, regularizer, weight_decay, settings.cifar10.seeds[0], formats)


@pytest.fixture(scope="module")
def default_run(splits) -> cifar_training.RunResult:
    return train(splits, tiny_settings())


# ---------- data ----------


def test_subsets_are_class_balanced_disjoint_and_seeded():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    train_idx, valid_idx = cifar_data.split_indices(labels, train_subset=200, valid_size=100, seed=3)
    assert len(train_idx) == 200 and len(valid_idx) == 100
    assert not set(train_idx.tolist()) & set(valid_idx.tolist())
    assert torch.bincount(labels[train_idx], minlength=10).tolist() == [20] * 10
    assert torch.bincount(labels[valid_idx], minlength=10).tolist() == [10] * 10
    again, _ = cifar_data.split_indices(labels, train_subset=200, valid_size=100, seed=3)
    other, _ = cifar_data.split_indices(labels, train_subset=200, valid_size=100, seed=4)
    assert torch.equal(train_idx, again) and not torch.equal(train_idx, other)


def test_augmentation_is_a_batched_tensor_flip_and_crop():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flips, offsets = cifar_data.augmentation_draws(steps=1, batch=64, gen=torch.Generator().manual_seed(1))
    out = cifar_data.augment(images, flips[0], offsets[0])
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = cifar_data.augmentation_draws(steps=1, batch=64, gen=torch.Generator().manual_seed(1))
    assert torch.equal(out, cifar_data.augment(images, again[0][0], again[1][0]))  # seeded
    assert not torch.equal(out, images)

    mask = torch.tensor([True, False] * 32)
    flipped = cifar_data.flip(images, mask)
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])

    offsets = torch.tensor([[0, 4, 8, 2], [8, 4, 0, 7]])  # (top, left) in the padded image; 4 = no shift
    cropped = cifar_data.crop(images[:4], offsets, padding=4)
    padded = torch.nn.functional.pad(images[:4], (4, 4, 4, 4))
    for b, (top, left) in enumerate(offsets.T.tolist()):
        assert torch.equal(cropped[b], padded[b, :, top : top + 32, left : left + 32])
    assert torch.equal(cropped[1], images[1])
    # image 0 moved down 4 and left 4: its top 4 rows and right 4 columns are zero padding, the rest the image
    assert (cropped[0, :, :4] == 0).all() and (cropped[0, :, :, -4:] == 0).all()
    assert torch.equal(cropped[0, :, 4:, :-4], images[0, :, :-4, 4:])


def test_normalise_uses_the_cifar_channel_statistics():
    mean_image = (torch.tensor(cifar_data.MEAN) * 255).round().to(torch.uint8).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    assert cifar_data.normalise(mean_image).abs().max() < 0.01


# ---------- training ----------


def test_the_net_learns(default_run):
    final = default_run.final
    assert default_run.diverged_epoch is None
    assert final["test_accuracy"] > 0.5  # chance is 0.1
    assert final["train_loss"] < default_run.history[0]["train_loss"]
    assert final["gap_accuracy"] == pytest.approx(final["train_accuracy"] - final["test_accuracy"])
    assert len(default_run.history) == 4  # the initial model and 3 epochs
    assert set(default_run.layer_norms[0]) >= {"prep", "layer1", "res1.a", "res3.b", "head"}


def test_same_seed_gives_identical_metrics_and_weights(splits, default_run):
    again = train(splits, tiny_settings())
    assert again.history == default_run.history  # bit-identical on the CPU
    assert all(torch.equal(again.state_dict[k], v) for k, v in default_run.state_dict.items())
    assert not torch.equal(
        cifar_model.build_model(8, seed=1).prep.conv.weight, cifar_model.build_model(8, seed=0).prep.conv.weight
    )


def test_measuring_the_angular_updates_changes_nothing(splits, default_run):
    """The angle of every step is read under no_grad from the weights alone: the run without it is the same run, bit
    for bit; with it, every layer has a mean angle per step for every epoch (none before the first step)."""
    settings = tiny_settings()
    formats = device_formats(CPU, settings.cifar10.train.mixed_precision)
    unmeasured = cifar_training.train(
        splits, settings.cifar10, "l2", 5e-4, settings.cifar10.seeds[0], formats, measure_angles=False
    )
    assert unmeasured.history == default_run.history and unmeasured.layer_norms == default_run.layer_norms
    assert all(torch.equal(unmeasured.state_dict[k], v) for k, v in default_run.state_dict.items())
    assert unmeasured.angular_updates == []
    angles = default_run.angular_updates
    assert len(angles) == len(default_run.history) and all(set(a) == set(default_run.layer_norms[0]) for a in angles)
    assert all(math.isnan(a) for a in angles[0].values())
    assert all(0 < a < 0.5 for epoch in angles[1:] for a in epoch.values()), "radians per step, small and never 0"
    assert cifar_model.scale_invariant_layers(cifar_model.build_model(8, seed=0)) == set(angles[0]) - {"head"}


def test_mixed_precision_runs_are_identical_too(splits):
    settings = tiny_settings(
        **{"cifar10.train.mixed_precision": True, "cifar10.train.epochs": 1, "cifar10.data.augment": True}
    )
    formats = device_formats(CPU, mixed_precision=True)
    native = cpu_has_bf16()
    assert formats.autocast_dtype == (torch.bfloat16 if native else None), "bf16 exactly where the CPU computes in it"
    first, second = train(splits, settings), train(splits, settings)
    assert first.history == second.history and math.isfinite(first.final["train_loss"])
    float32 = train(splits, tiny_settings(**{"cifar10.train.epochs": 1, "cifar10.data.augment": True}))
    assert (first.history != float32.history) is native, "bf16 ran where it is native, float32 elsewhere"


def test_a_onednn_cap_below_bf16_trains_in_float32(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX512_CORE keeps oneDNN off bf16 on any CPU: the trainer then computes as a CPU without
    bf16 does, so the variable alone stands in for the float32 machine most users have."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert not cpu_has_bf16() and device_formats(CPU, mixed_precision=True).autocast_dtype is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert device_formats(CPU, mixed_precision=True).autocast_dtype == (torch.bfloat16 if cpu_has_bf16() else None)


def test_weight_decay_shrinks_the_weights(splits):
    settings = tiny_settings(**{"cifar10.train.epochs": 1})
    plain, decayed = train(splits, settings, weight_decay=0.0), train(splits, settings, weight_decay=0.05)
    assert decayed.final["w_norm"] < plain.final["w_norm"]
    assert all(decayed.layer_norms[-1][layer] < norm for layer, norm in plain.layer_norms[-1].items())
    assert decayed.history[0] == plain.history[0]  # same initial model: λ is the only difference


def test_norm_and_bias_parameters_are_not_decayed_unless_asked():
    model = cifar_model.build_model(width=4, seed=0)
    groups = {g["name"]: g for g in cifar_training.param_groups(model, 5e-4, decay_norm_and_bias=False)}
    decayed = {id(p) for p in groups["decay"]["params"]}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_weight_matrix = isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight"
            assert (id(param) in decayed) == is_weight_matrix, f"{type(module).__name__}.{name}"
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 5e-4
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and model.head.bias is not None

    everything = cifar_training.param_groups(model, 5e-4, decay_norm_and_bias=True)
    assert [g["name"] for g in everything] == ["decay"]
    assert len(everything[0]["params"]) == len(list(model.parameters()))


def test_optimizer_choice_and_schedule():
    model = cifar_model.build_model(width=4, seed=0)
    spec = tiny_settings().cifar10.train
    sgd = cifar_training.make_optimizer(model, spec, "l2", 5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert {g["name"]: g["weight_decay"] for g in sgd.param_groups} == {"decay": 5e-4, "no_decay": 0.0}
    adamw = cifar_training.make_optimizer(model, spec, "decoupled", 0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == spec.adamw_lr
    assert {g["name"]: g["weight_decay"] for g in adamw.param_groups} == {"decay": 0.05, "no_decay": 0.0}
    for regularizer in ("l1", "dropout", "noise"):  # their strength is not weight decay
        plain = cifar_training.make_optimizer(model, spec, regularizer, 0.3)
        assert isinstance(plain, torch.optim.SGD) and all(g["weight_decay"] == 0.0 for g in plain.param_groups)
    factors = [cifar_training.lr_factor(step, 100, spec) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and max(factors) == 1.0 and factors[-1] < 0.02  # warm-up, then decay
    cosine = spec.model_copy(update=dict(schedule="cosine", warmup_fraction=0.0))
    assert cifar_training.lr_factor(50, 100, cosine) == pytest.approx(0.5)
    constant = spec.model_copy(update=dict(schedule="constant"))
    assert cifar_training.lr_factor(99, 100, constant) == 1.0


def test_adamw_trains(splits):
    settings = tiny_settings(**{"cifar10.train.adamw_lr": 3e-3, "cifar10.train.epochs": 1})
    run = train(splits, settings, weight_decay=0.05, regularizer="decoupled")
    assert run.diverged_epoch is None and run.final["test_accuracy"] > 0.2


def test_l1_soft_thresholds_to_exact_zeros_and_l2_makes_none(splits):
    """The proximal step sets weights to exactly 0 (more with a larger λ); L2 and dropout end with none, and
    the BatchNorm and bias parameters, outside the decayed group, are not thresholded."""
    settings = tiny_settings(**{"cifar10.train.epochs": 1})
    weak, strong = (train(splits, settings, strength, "l1") for strength in (1e-3, 2e-2))
    assert 0 < weak.final["zero_fraction"] < strong.final["zero_fraction"] <= 1
    assert train(splits, settings, 5e-4, "l2").final["zero_fraction"] == 0.0
    norms = [v for k, v in strong.state_dict.items() if k.endswith("norm.weight")]
    assert len(norms) == 8 and all((v != 0).all() for v in norms), "BatchNorm scales (one per conv) are not penalised"


def test_l1_proximal_step_is_the_soft_threshold():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.05, 0.1, -0.4]]))
    optimizer = torch.optim.SGD([{"name": "decay", "params": [layer.weight], "weight_decay": 0.0}], lr=0.5)
    regularizers.get("l1").after_step(optimizer, strength=0.2)  # threshold η·λ = 0.1
    torch.testing.assert_close(layer.weight, torch.tensor([[0.2, 0.0, 0.0, -0.3]]))
    assert (layer.weight == 0).sum() == 2


def test_dropout_is_active_in_training_and_off_in_evaluation(splits):
    model = cifar_model.build_model(width=4, seed=0, dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    assert isinstance(cifar_model.build_model(width=4, seed=0).dropout, nn.Identity)
    assert model.state_dict().keys() == cifar_model.build_model(width=4, seed=0).state_dict().keys(), "no extra weights"
    x = cifar_data.normalise(splits.test.images[:8])
    model.train()
    assert not torch.equal(model(x), model(x)), "fresh masks in training"
    model.eval()
    assert torch.equal(model(x), model(x))
    settings = tiny_settings(**{"cifar10.train.epochs": 1})
    first, second = (train(splits, settings, 0.5, "dropout") for _ in range(2))
    assert first.final == second.final, "the masks come from the seed: same seed, same run"
    assert first.final != train(splits, settings, 0.0, "l2").final


def test_a_diverging_run_is_stopped_and_recorded(splits):
    run = train(
        splits, tiny_settings(**{"cifar10.train.epochs": 3}), weight_decay=1e3
    )  # ηλ ≫ 2: w flips sign and grows
    assert run.diverged_epoch == 1
    assert len(run.history) == 2  # the initial model and the epoch that diverged; no more
    assert not math.isfinite(run.final["train_loss"])


# ---------- the stages, with a real MLflow store ----------


def args(name: str, module) -> argparse.Namespace:
    """Stage `name`'s arguments as dvc.yaml gives them: the same paths and run."""
    return module.parser().parse_args(stage_args(name))


def run_of(client: mlflow.MlflowClient, record: dict) -> mlflow.entities.Run:
    """The one MLflow run that wrote the output of `record` (a run.json, or chosen_model.json)."""
    (run,) = client.search_runs(
        [client.get_experiment_by_name("wd-cifar10").experiment_id], run_filter(record), max_results=2
    )
    return run


def folder(name: str) -> RunFolder:
    """The output folder of training stage `name` (a grid or the headline), as dvc.yaml gives it."""
    return RunFolder(args(name, train_images).out)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, splits) -> Path:
    """Every regulariser's grid (one l2 λ diverges), the headline, evaluate_images, report_images and
    compare_images in a temp project."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "reports/templates", root / "reports/templates")  # the pages' templates, as code
    test = splits.test
    train_x = torch.cat([splits.train.images, splits.valid.images])
    train_y = torch.cat([splits.train.labels, splits.valid.labels])
    save_cifar10(
        Cifar10(train_x, train_y, test.images, test.labels, CLASSES),
        root / args("train_images@cifar10-l2", train_images).data,
        source_md5="0" * 32,
    )
    settings = tiny_settings(
        **{
            "cifar10.train.epochs": 1,
            "cifar10.strengths.l2": [0.0, 5e-4, 1e3],
            "cifar10.seeds": [0, 1],
            "cifar10.wd": 5e-4,
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for name in [
            *(f"train_images@cifar10-{r}" for r in REGULARIZERS),
            "headline_images@cifar10",
        ]:  # the headline takes l2's λ = 5e-4
            train_images.main(settings, args(name, train_images))
        evaluate_images.main(settings, args("evaluate_images@cifar10", evaluate_images))
        report_images.main(settings, args("report_images@cifar10", report_images))
        compare_regularizers.main(settings, args("compare_images@cifar10", compare_regularizers))
    return root


def test_the_gain_over_no_decay_is_judged_seed_by_seed():
    # Seeds 0-2 at λ = 0 and 0.05 as the default study measured them: the seeds differ in level, the gain is steady.
    test = {0.0: [0.6522, 0.6490, 0.6486], 0.05: [0.6693, 0.6574, 0.6603]}
    finals = pd.DataFrame(
        [
            {"lambda": lam, "seed": seed, "test_accuracy": acc, "diverged": False}
            for lam, accs in test.items()
            for seed, acc in enumerate(accs)
        ]
    )
    gain = summary.paired_gain(finals, "test_accuracy", 0.05)
    differences = pd.Series(test[0.05]) - pd.Series(test[0.0])
    assert gain["mean"] == pytest.approx(differences.mean()) and gain["std"] == pytest.approx(differences.std())
    assert 0 < gain["ci_low"] < gain["mean"] < gain["ci_high"]
    unpaired = {lam: results.stats(pd.Series(accs)) for lam, accs in test.items()}
    assert not results.separated(unpaired[0.0], unpaired[0.05]), "unpaired, the intervals overlap"
    record = cifar_findings.study(
        finals.assign(train_accuracy=0.9, gap_accuracy=0.2, w_norm=1.0), (0.0, 0.05), 0.05, 0.1
    )
    assert record["gain"]["verdict"] == "better" and record["gain"]["unpaired_apart"] is False
    assert record["gain"]["mean"] == pytest.approx(gain["mean"]), "the page's record is the metrics' paired gain"
    # a seed whose run diverged at either strength has no pair; a swapped sign holds 0 in its interval
    finals.loc[(finals["seed"] == 2) & (finals["lambda"] == 0.0), "diverged"] = True
    assert summary.paired_gain(finals, "test_accuracy", 0.05)["mean"] == pytest.approx(differences[:2].mean())
    finals.loc[finals["seed"] == 1, "test_accuracy"] = [0.70, 0.64]
    swapped = cifar_findings.study(
        finals.assign(train_accuracy=0.9, gap_accuracy=0.2, w_norm=1.0), (0.0, 0.05), 0.05, 0.1
    )
    assert swapped["gain"]["verdict"] == "indistinguishable", "the interval holds 0"
    assert summary.paired_gain(finals, "test_accuracy", 0.5) is None  # not in the grid


def test_stages_write_metrics_curves_and_report(pipeline):
    evaluated, grid, report = (
        args("evaluate_images@cifar10", evaluate_images),
        folder("train_images@cifar10-l2"),
        args("report_images@cifar10", report_images),
    )
    metrics = json.loads((pipeline / evaluated.metrics).read_text())
    assert set(metrics["grid"]) == {"lambda_0", "lambda_0.0005", "lambda_1000"}
    assert metrics["seeds"] == 2
    assert (
        metrics["grid"]["lambda_1000"]["diverged"] == 2
        and metrics["grid"]["lambda_1000"]["test_accuracy"]["mean"] is None
    )
    assert not metrics["headline"]["diverged"] and metrics["headline"]["test_accuracy"]["mean"] > 0.3
    accuracy = metrics["grid"]["lambda_0"]["test_accuracy"]
    assert accuracy["ci_low"] <= accuracy["mean"] <= accuracy["ci_high"]
    assert metrics["chosen_by_validation"]["lambda"] in (0.0, 5e-4)  # a diverged run is never picked
    by_seed = pd.read_csv(pipeline / evaluated.by_seed)
    l2 = by_seed[by_seed["regularizer"] == "l2"]
    assert len(l2) == 6 and set(by_seed["seed"]) == {0, 1}
    # the mean and spread over seeds are those of the per-seed rows
    per_seed = l2.loc[l2["lambda"] == 0.0, "test_accuracy"]
    assert accuracy["mean"] == pytest.approx(per_seed.mean()) and accuracy["std"] == pytest.approx(per_seed.std(ddof=1))
    # l1, dropout and noise have no strength 0 of their own: l2's λ = 0 runs stand for it, the same plain SGD
    for regularizer in regularizers.sharing_baseline_zero(REGULARIZERS):
        zero = by_seed[(by_seed["regularizer"] == regularizer) & (by_seed["lambda"] == 0.0)]
        pd.testing.assert_frame_equal(
            zero.drop(columns="regularizer").reset_index(drop=True),
            l2[l2["lambda"] == 0.0].drop(columns="regularizer").reset_index(drop=True),
        )
    assert set(metrics["regularizers"]) == set(REGULARIZERS) and metrics["regularizer"] == "l2"
    assert metrics["regularizers"]["l2"]["valid_strength"] == metrics["chosen_by_validation"]["lambda"]
    # each regulariser's scores per strength, which the regression check weighs a moved choice with
    scores = metrics["regularizers"]["l2"]["by_strength"]
    assert set(scores) == set(metrics["grid"]) and scores["lambda_1000"]["valid_accuracy"]["mean"] is None
    assert scores["lambda_0"]["valid_accuracy"] == {
        k: metrics["grid"]["lambda_0"]["valid_accuracy"][k] for k in ("mean", "std")
    }
    assert set(metrics["regularizers"]["dropout"]["by_strength"]["lambda_0"]) == {"valid_accuracy", "test_accuracy"}

    history = pd.read_csv(pipeline / grid.history)
    assert {"seed", "lambda", "epoch", "train_accuracy", "test_loss", "gap_accuracy", "gap_loss", "w_norm"} <= set(
        history.columns
    )
    assert len(pd.read_csv(pipeline / evaluated.table)) == 3
    layers = pd.read_csv(pipeline / grid.layer_norms)
    assert set(layers["layer"]) >= {"prep", "head"}
    assert set(layers.loc[~layers["scale_invariant"], "layer"]) == {"head"}, "BatchNorm follows every conv"
    finished = layers[(layers["lambda"] < 1e3) & (layers["epoch"] > 0)]  # λ = 1e3 diverges in its first epoch
    assert layers.loc[layers["epoch"] == 0, "angular_update"].isna().all() and (finished["angular_update"] > 0).all()
    checkpoint = torch.load(pipeline / grid.model, weights_only=True)
    model = cifar_model.ResNet(checkpoint["width"])
    model.load_state_dict(checkpoint["state_dicts"][0])

    page = (pipeline / report.page).read_text()
    assert "biases and BatchNorm scales/shifts are not decayed" in page and "diverged" in page
    assert "rotational equilibrium" in page and "e-folds" in page and "**`decoupled`" in page
    # AdamW's grid has no λ = 0 of its own: its accuracy per λ stands beside its angles
    assert "This grid has no λ = 0 run of its own" in page and re.search(r"λ = 0\.05: .* Test accuracy \d", page)
    assert "Seeds 0, 1" in page and "95 %" in page
    pngs = sorted((pipeline / report.figures).glob("*.png"))
    assert {p.stem for p in pngs} == {
        "accuracy_vs_lambda",
        "gap_vs_lambda",
        "curves",
        "layer_norms",
        "angular_updates_l2",  # SGD's equilibrium
        "angular_updates_decoupled",  # AdamW's
    }
    for figure in pngs:
        assert figure.stat().st_size > 10_000
        assert f"]({report.figures.relative_to(report.page.parent) / figure.name})" in page


def test_mlflow_has_a_parent_run_with_one_nested_run_per_lambda(pipeline):
    record = json.loads((pipeline / folder("train_images@cifar10-l2").record).read_text())
    client = mlflow.MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    parent = run_of(client, record)
    assert parent.data.tags["wd_lab.output"] == folder("train_images@cifar10-l2").root.as_posix()
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.wd_lab.grid_run = '{parent.info.run_id}' and tags.wd_lab.role = 'cifar10-grid-member'",
    )
    assert {(float(run.data.params["lambda"]), int(run.data.params["seed"])) for run in children} == {
        (strength, seed) for strength in (0.0, 5e-4, 1e3) for seed in (0, 1)
    }, "one nested run per (λ, seed)"
    by_lambda = {float(run.data.params["lambda"]): run for run in children if run.data.params["seed"] == "0"}
    assert by_lambda[1e3].data.metrics["diverged"] == 1.0 and by_lambda[0.0].data.metrics["diverged"] == 0.0
    steps = [m.step for m in client.get_metric_history(by_lambda[0.0].info.run_id, "test_accuracy")]
    assert steps == [0, 1]
    angles = sorted(
        client.get_metric_history(by_lambda[0.0].info.run_id, "angular_update.res1.a"), key=lambda m: m.step
    )
    assert [m.step for m in angles] == [0, 1] and math.isnan(angles[0].value) and angles[1].value > 0, (
        "none before a step"
    )
    assert [a.path for a in client.list_artifacts(by_lambda[0.0].info.run_id, "model")] == [
        "model/model_l2_0_seed_0.pt"
    ]
    assert {run.data.params["regularizer"] for run in children} == {"l2"} and parent.data.params["regularizer"] == "l2"
    (zero,) = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.wd_lab.grid_run = '{parent.info.run_id}' and tags.wd_lab.role = 'cifar10-grid-strength' "
        "and params.strength = '0.0'",
    )
    assert zero.data.metrics["test_accuracy_mean"] == pytest.approx(
        (
            by_lambda[0.0].data.metrics["final_test_accuracy"]
            + [r for r in children if r.data.params == by_lambda[0.0].data.params | {"seed": "1"}][0].data.metrics[
                "final_test_accuracy"
            ]
        )
        / 2
    ), "the strength run carries the aggregates over seeds"
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/cifar10.md" in report and "report/accuracy_vs_lambda.png" in report


def test_every_training_run_names_the_splits_it_read(pipeline):
    """Each grid's and the headline's runs, nested ones too (the headline's reused from the grid included), log the
    three splits as MLflow datasets: digests of the images themselves, the archive and split as their source."""
    study = tiny_settings().cifar10
    splits = cifar_data.load_splits(pipeline / args("train_images@cifar10-l2", train_images).data, study.data)
    client = mlflow.MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wd-cifar10").experiment_id
    training = {
        run.info.run_id
        for run in client.search_runs([experiment], max_results=1000)
        if run.data.tags["wd_lab.role"].startswith(("cifar10-grid", "cifar10-headline"))
    }
    strengths = 3 + len(REGULARIZERS) - 1  # l2's three, one for each other regulariser
    assert len(training) == len(REGULARIZERS) + 1 + strengths + 2 * strengths + 2, "grids, headline, strengths, seeds"
    for name, context in (("train", "training"), ("valid", "validation"), ("test", "evaluation")):
        digest = content_digest(*getattr(splits, name))
        found = client.search_runs(
            [experiment],
            f"dataset.name = 'cifar10-{name}' and dataset.digest = '{digest}' and dataset.context = '{context}'",
            max_results=1000,
        )
        assert {run.info.run_id for run in found} == training, name
    (run,) = client.search_runs([experiment], "attributes.run_name = 'l2 0.0005 seed 1'", max_results=1)
    train = next(i for i in run.inputs.dataset_inputs if i.dataset.name == "cifar10-train")
    assert json.loads(train.dataset.source)["tags"] == {
        "dataset": "cifar10",
        "archive_url": study.download.url,
        "archive_md5": study.download.md5,
        "file": str(args("train_images@cifar10-l2", train_images).data),
        "split": "train",
        "split_seed": 0,
        "train_subset": 0,
        "valid_size": 50,
    }


def test_the_headline_takes_its_runs_from_the_grid_and_trains_none(pipeline):
    grid, headline = folder("train_images@cifar10-l2"), folder("headline_images@cifar10")
    grid_rows = pd.read_csv(pipeline / grid.history)
    headline_rows = pd.read_csv(pipeline / headline.history)
    pd.testing.assert_frame_equal(grid_rows[grid_rows["lambda"] == 5e-4].reset_index(drop=True), headline_rows)
    grid_record, headline_record = (json.loads((pipeline / a.record).read_text()) for a in (grid, headline))
    client = mlflow.MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    assert run_of(client, headline_record).data.tags["wd_lab.reused_from"] == run_of(client, grid_record).info.run_id
    assert headline_record["fingerprint"] == grid_record["fingerprint"]


def test_a_headline_lambda_outside_the_grid_is_trained(pipeline, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(pipeline, project)
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    settings = tiny_settings(
        **{
            "cifar10.train.epochs": 1,
            "cifar10.strengths.l2": [0.0, 5e-4, 1e3],
            "cifar10.seeds": [0, 1],
            "cifar10.wd": 1e-2,
        }
    )
    headline = args("headline_images@cifar10", train_images)
    train_images.main(settings, headline)
    rows = pd.read_csv(RunFolder(headline.out).history)
    assert set(rows["lambda"]) == {1e-2} and set(rows["seed"]) == {0, 1}
    record = json.loads(RunFolder(headline.out).record.read_text())
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert "wd_lab.reused_from" not in run_of(client, record).data.tags


def test_the_comparison_page_sets_every_regulariser_side_by_side(pipeline):
    compare = args("compare_images@cifar10", compare_regularizers)
    page = (pipeline / compare.page).read_text()
    for regularizer in REGULARIZERS:
        assert regularizer in [row[0] for row in table_rows(page)], regularizer
    assert "AdamW" in page and "l2's λ = 0 run" in page
    pngs = sorted((pipeline / compare.figures).glob("*.png"))
    assert [p.name for p in pngs] == sorted(
        [
            "accuracy_vs_strength.png",
            "gap_vs_strength.png",
            "zeros_vs_strength.png",
            "wnorm_vs_strength.png",
            "layer_norms.png",
        ]
    )
    assert all(f"]({compare.figures.relative_to(compare.page.parent) / p.name})" in page for p in pngs)


def test_curves_are_measured_on_subsets_the_last_epoch_on_every_image(splits):
    settings = tiny_settings(**{"cifar10.data.curve_subset": 20, "cifar10.train.epochs": 2})
    run = train(splits, settings)
    assert [row["full_sets"] for row in run.history] == [False, False, True]
    whole = train(splits, tiny_settings(**{"cifar10.data.curve_subset": 0, "cifar10.train.epochs": 2}))
    assert run.final == whole.final, "the final metrics do not depend on the curves' subsets"
    assert (
        run.history[1]["test_accuracy"] != whole.history[1]["test_accuracy"]
        or run.history[1]["test_loss"] != whole.history[1]["test_loss"]
    )


def test_metrics_reach_mlflow_as_each_epoch_ends_and_the_chosen_model_loads(pipeline):
    client = mlflow.MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    grid = run_of(client, json.loads((pipeline / folder("train_images@cifar10-l2").record).read_text()))
    member = client.search_runs(
        [grid.info.experiment_id],
        filter_string=f"tags.wd_lab.grid_run = '{grid.info.run_id}' and params.lambda = '0.0' "
        "and tags.wd_lab.role = 'cifar10-grid-member'",
    )[0]
    history = sorted(client.get_metric_history(member.info.run_id, "test_accuracy"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1] and history[0].timestamp < history[1].timestamp, (
        "logged live, epoch by epoch"
    )

    chosen = json.loads((pipeline / args("evaluate_images@cifar10", evaluate_images).model_record).read_text())
    assert chosen["lambda"] in (0.0, 5e-4) and not {"run_id", "model_uri"} & chosen.keys(), "no run identity"
    assert run_of(client, chosen).info.run_id == grid.info.run_id, "the record finds the grid's run, which holds it"
    mlflow.set_tracking_uri(f"sqlite:///{pipeline / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{grid.info.run_id}/model")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    checkpoint = torch.load(pipeline / folder("train_images@cifar10-l2").model, weights_only=True)
    net = cifar_model.ResNet(checkpoint["width"])
    net.load_state_dict(checkpoint["state_dicts"][checkpoint["lambdas"].tolist().index(chosen["lambda"])])
    expected = net.eval()(cifar_data.normalise(images))
    torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)
