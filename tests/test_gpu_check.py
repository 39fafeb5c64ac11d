"""The GPU path: CUDA runs switch to deterministic kernels, CPU runs keep their path."""

from __future__ import annotations

import os

import pytest
import torch

from wdlab.device import CUBLAS_WORKSPACE, set_cuda_determinism


@pytest.fixture
def restores_torch_determinism():
    """Whatever a test switches, the next one finds torch's global flags and the environment as they were."""
    cudnn = torch.backends.cudnn
    flags = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
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
