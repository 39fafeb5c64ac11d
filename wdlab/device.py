"""Where tensors live and how they are computed: device choice, memory layout, bf16 autocast and CUDA determinism."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from dataclasses import dataclass

import torch

from wdlab.errors import StageError


def pick_device(name: str) -> torch.device:
    """`auto` takes CUDA, then Apple MPS, then the CPU; a named device must be present."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if not available[name]:
        raise StageError(
            f"device '{name}' is not available on this machine: set `device: auto` or `cpu` in params.yaml"
        )
    return torch.device(name)


@dataclass(frozen=True)
class Formats:
    """How tensors are laid out and computed on the device: channels_last and bf16 autocast where they pay."""

    device: torch.device
    memory_format: torch.memory_format
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        precision = "bf16 autocast" if self.autocast_dtype is not None else "float32"
        layout = "channels_last" if self.memory_format == torch.channels_last else "NCHW"
        return f"{precision}, {layout}"


def device_formats(device: torch.device, mixed_precision: bool) -> Formats:
    """CUDA and CPU: channels_last, and bf16 autocast where the hardware has bf16; MPS: plain float32 NCHW."""
    channels_last = device.type in ("cuda", "cpu")
    bf16 = mixed_precision and (
        (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_has_bf16())
    )
    return Formats(
        device, torch.channels_last if channels_last else torch.contiguous_format, torch.bfloat16 if bf16 else None
    )


CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace settings: eight 4 MiB buffers (32 MiB)


def set_cuda_determinism(device: torch.device, deterministic: bool) -> None:
    """On CUDA, deterministic kernels (the same numbers on every rerun) or torch's defaults; elsewhere nothing.

    Deterministic: cuDNN convolutions pick only deterministic algorithms (their backward passes otherwise may
    accumulate with atomics, in a different order each run), and `torch.use_deterministic_algorithms` makes every
    op with a deterministic variant use it and every op without one raise, so a run fails in its first step instead
    of giving numbers a rerun cannot reproduce. Every op the trainer runs has one (conv, BatchNorm, 2D max-pool,
    cross-entropy on [B, classes], the augmentation's gathers); what the docs list as raising (NLLLoss on images,
    3D max-pool, adaptive pooling, …) it does not use. cuDNN's benchmark mode stays off: it times candidate
    algorithms per shape and keeps the fastest, which can differ between runs. On the CPU torch is deterministic
    already (for a given thread count): the switches would only reroute some of its ops and fill every new tensor
    before use, slower and no more exact, so the CPU keeps its path and its numbers.
    """
    if device.type != "cuda":
        return
    # cuBLAS reads its workspace settings when torch first creates its handle, so this must come before the first
    # matmul of the process; torch's deterministic mode refuses cuBLAS calls without them. A user's own value stays.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) that stop below AVX512_CORE_BF16: no bf16 dot product among them
ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX) that oneDNN may use; without them bf16 on the CPU is
    emulated and slow. `ONEDNN_MAX_CPU_ISA=AVX512_CORE` keeps oneDNN off bf16 on any CPU, so it answers False
    there too: one environment variable then stands in for a CPU without bf16 (the float32 most CPUs compute in)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """Let glibc keep the memory a CPU training step frees for the next step, instead of handing it back to the kernel.

    By default glibc trims the heap whenever twice its largest recent block lies free at its top, which the end of
    every backward pass does: each step then page-faults its activations back in, zeroed by the kernel (width 16,
    batch 256: ~8,000 faults, ~12 % of a step on the 2-core CPU; evaluation pays the same way). Here blocks up to
    32 MiB come from the heap (glibc's own ceiling for its adaptive threshold) and up to 1 GiB of free heap is kept;
    larger blocks, like the dataset, are still mapped apart. Process-wide; nothing to do without glibc.
    """
    if platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
