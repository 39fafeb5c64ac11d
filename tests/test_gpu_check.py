"""The GPU path: CUDA determinism switches, and the GPU check run on a CPU with nothing but its own dependencies."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from ruamel.yaml import YAML

from benchmarks import gpu_check
from wdlab.device import CUBLAS_WORKSPACE, set_cuda_determinism
from wdlab.settings import parse_settings
from wdlab.workspace import ROOT, load_params, set_key

# What a bare GPU machine lacks: the pipeline's and the reports' packages.
NOT_NEEDED = ("dvc", "mlflow", "ray", "pandas", "seaborn", "matplotlib", "scipy", "sklearn", "ruamel", "yaml")
RUN_WITHOUT = """
import runpy, sys

sys.modules.update(dict.fromkeys({not_needed!r}))  # None: importing one fails as if it were not installed
runpy.run_module("benchmarks.gpu_check", run_name="__main__")
"""


@pytest.fixture
def restores_torch_determinism():
    """Whatever a test switches, the next one finds torch's global flags and the environment as they were."""
    cudnn = torch.backends.cudnn
    flags = (
        cudnn.benchmark,
        cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    workspace = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    yield
    cudnn.benchmark, cudnn.deterministic = flags[:2]
    torch.use_deterministic_algorithms(flags[2], warn_only=flags[3])
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if workspace is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def test_cuda_runs_switch_to_deterministic_kernels(restores_torch_determinism):
    set_cuda_determinism(torch.device("cuda"), True)  # only flags and the environment: no GPU needed
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()

    set_cuda_determinism(torch.device("cuda"), False)  # torch's defaults again
    assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()


def test_a_users_cublas_workspace_setting_stays(restores_torch_determinism):
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    set_cuda_determinism(torch.device("cuda"), True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_the_cpu_keeps_its_path(restores_torch_determinism):
    before = (torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    set_cuda_determinism(torch.device("cpu"), True)
    assert (torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def gpu_preset() -> dict[str, object]:
    """The `-S key=value` overrides of the GPU preset in docs/cifar10.md (the `dvc exp run` after `# a GPU:`), values
    as YAML."""
    lines = (ROOT / "docs/cifar10.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# a GPU:")) + 1
    command = ""
    while True:
        command += lines[start].strip().removesuffix("\\") + " "
        if not lines[start].rstrip().endswith("\\"):
            break
        start += 1
    words = shlex.split(command)
    assert words[:3] == ["dvc", "exp", "run"], command
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {key: YAML(typ="safe", pure=True).load(value) for key, value in (o.split("=", 1) for o in overrides)}


def test_the_check_measures_the_documented_gpu_recipe():
    preset = gpu_preset()
    assert preset["cifar10.data.train_subset"] == 0 and preset["cifar10.model.width"] == 64, "the full-size recipe"
    raw = load_params()
    for key, value in preset.items():
        set_key(raw, key, value)
    assert gpu_check.recipe(gpu_check.FULL) == parse_settings(raw).cifar10, (
        "benchmarks/gpu_check.py's RECIPE must follow params.yaml and the GPU preset of docs/cifar10.md"
    )


def test_the_check_runs_on_a_cpu_without_the_pipelines_packages(tmp_path):
    out = tmp_path / "gpu_check.json"
    # One thread: the tiny tensors gain nothing from more, and on a busy machine OpenMP's threads wait on each other.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_WITHOUT.format(not_needed=NOT_NEEDED),
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "peak", "recipe", "memory", "airbench", "same_seed", "study"}
    assert report["machine"]["device"] == "cpu" and report["memory"] is None  # memory is measured on CUDA only
    assert report["same_seed"] == {"epochs": 1, "train_images": 250, "identical": True, "max_difference": 0.0}
    for section in ("recipe", "airbench"):
        assert report[section]["images_per_s"] > 0 and report[section]["tflops"] > 0
    assert report["recipe"]["seconds_per_epoch"] > report["recipe"]["train_seconds"] > 0
    assert report["airbench"]["ratio_to_airbench94"] > 0
    study = report["study"]
    strengths = gpu_check.RECIPE["strengths"]
    assert study["runs"] == 3 * sum(map(len, strengths.values())) and study["epochs"] == 30  # every strength on 3 seeds
    assert study["hours"] == pytest.approx(study["runs"] * study["epochs"] * study["seconds_per_epoch"] / 3600)
    assert "same seed" in done.stdout and "identical" in done.stdout
