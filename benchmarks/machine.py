"""The machine a benchmark ran on, its revision and date, printed with every figure and written beside it as JSON.

Every benchmark writes its figures through `write_result`; `python -m benchmarks.render` puts them into
docs/benchmarks.md. Torch is imported only to describe this machine, so the renderer reads results without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Machine:
    """What decides a CPU or GPU figure: the chip, its cores, the instructions PyTorch and oneDNN may use, the GPU."""

    cpu: str
    cores: int  # logical CPUs this process may run on
    torch_threads: int
    cpu_capability: str  # the vector instructions PyTorch's own kernels use (AVX2, AVX512, ...)
    bf16_native: bool  # wdlab.device.cpu_has_bf16(): whether the trainer computes in bf16 on this CPU
    onednn_isa_cap: str | None  # ONEDNN_MAX_CPU_ISA, when set: the instruction set oneDNN stops at
    gpu: str | None
    torch: str
    revision: str
    date: str
    load: float  # 1-minute load average when described: above `cores`, every figure is an upper bound in time

    @property
    def machine_class(self) -> str:
        """A file-name slug for the kind of machine: e.g. `cpu2-fp32`, `cpu8-bf16`, `gpu-nvidia-h100`."""
        if self.gpu:
            return "gpu-" + re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return f"cpu{self.cores}-{'bf16' if self.bf16_native else 'fp32'}"

    def describe(self) -> str:
        return describe(dataclasses.asdict(self))


def describe(machine: dict[str, Any]) -> str:
    """One line for a machine as a results file holds it (`Machine`'s fields)."""
    cap = f", oneDNN capped at {machine['onednn_isa_cap']}" if machine["onednn_isa_cap"] else ""
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ""
    return (
        f"{machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), PyTorch "
        f"{machine['torch']} CPU capability {machine['cpu_capability']}, "
        f"bf16 {'native' if machine['bf16_native'] else 'not native'}{cap}{gpu}; "
        f"revision {machine['revision']}, {machine['date']}, load {machine['load']:.2f}"
    )


def this_machine() -> Machine:
    import torch

    from wdlab.device import cpu_has_bf16

    return Machine(
        cpu=_cpu_model(),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        bf16_native=cpu_has_bf16(),
        onednn_isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        torch=torch.__version__,
        revision=_revision(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        load=os.getloadavg()[0],
    )


def write_result(
    name: str, machine: Machine, figures: dict[str, Any], details: dict[str, Any] | None = None, results: Path = RESULTS
) -> Path:
    """`benchmarks/results/<name>-<machine class>.json`: the figures with the machine they were measured on, and
    `details` of it that only some benchmarks know (a GPU's CUDA version, say) beside `Machine`'s fields.

    `name` is the benchmark's module name (no `-`: the file name's first `-` separates it from the machine class).
    """
    if "-" in name:
        raise ValueError(f"benchmark name {name!r}: no '-' (it separates the name from the machine class)")
    path = results / f"{name}-{machine.machine_class}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": dataclasses.asdict(machine) | (details or {}), "figures": figures}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return found.group(1).strip() if found else platform.machine()


def _revision() -> str:
    """The short commit, marked `-dirty` when tracked files differ from it (a figure then belongs to no commit)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
