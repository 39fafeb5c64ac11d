"""Benchmark: the pipeline as a user runs it, in a temp copy of a git revision of this repository.

    python -m benchmarks.pipeline                      # `dvc exp run -S wd=3` and a no-op `dvc repro`, warm, 3 times
                                                       # (of the synthetic branch: wdlab.workspace.SYNTHETIC_BRANCH)
    python -m benchmarks.pipeline --repeat 5           # 5 times each (the run cache is cleared between runs)
    python -m benchmarks.pipeline --cifar              # + the default CIFAR-10 branch on a full-size stand-in
    python -m benchmarks.pipeline --cifar --rev 3f2de00   # the same for an older revision: before and after
    # the CIFAR-10 branch as a CPU without bf16 runs it:
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python -m benchmarks.pipeline --cifar-only
    # the README's first command, the whole default `dvc repro` (synthetic and every image study of `images`), as a
    # CPU without bf16 runs it; written to benchmarks/results/default_repro-<machine class>.json:
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python -m benchmarks.pipeline --default

The CIFAR-10 archive is the generated stand-in in the official format (wdlab/cifar10/standin.py, 50,000 training
and 10,000 test images, the "ci" kind), read from a local path: the same bytes for every revision; Fashion-MNIST
comes from its definition's sources (Debian's installed copy first), verified by content. Also prints
one epoch of the current trainer split into training and evaluation (curves on subsets vs every image). It prints
the machine first (benchmarks/machine.py) and writes its figures with it to
benchmarks/results/pipeline-<machine class>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import this_machine, write_result  # noqa: E402
from wdlab.cifar10.standin import build_archive  # noqa: E402
from wdlab.workspace import SYNTHETIC_BRANCH, commit_all, dvc, git, load_params, set_key, tool_env, write_params  # noqa: E402

CIFAR_BRANCH = (
    "report_images@cifar10",
    "compare_images@cifar10",
    "compare_architectures@cifar10",
)  # with everything they depend on: download, the grids (both nets'), headline, evaluate


def checkout(rev: str, dest: Path) -> Path:
    """The tree of `rev` as a fresh git + DVC repository (no outputs, no caches)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x"], cwd=dest, input=archive, check=True)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "bench@wd-lab.invalid")
    git(dest, "config", "user.name", "wd-lab benchmark")
    generated = [dest / "dvc.lock", dest / "metrics", dest / "results", dest / "reports" / "figures"]
    for path in [*generated, *(dest / "reports").glob("*.md")]:  # the pages, not their templates (reports/templates)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    commit_all(dest, f"benchmark of {rev}")
    return dest


def timed_lines(project: Path, *args: str) -> tuple[float, float, list[tuple[float, str]]]:
    """Run `dvc *args`: wall seconds, CPU seconds (DVC and the stages it ran) and each output line with the
    second it arrived."""
    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n" + "\n".join(line for _, line in lines[-30:]))
    return time.perf_counter() - start, _children_cpu() - cpu_before, lines


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_spans(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per stage that ran: from DVC's `Running stage` to its `Updating lock file` (the stage's process,
    then DVC hashing its outputs)."""
    spans, current = {}, None
    for second, line in lines:
        if match := re.match(r"Running stage '([^']+)'", line):
            current, started = match.group(1), second
        elif current and line.startswith("Updating lock file"):
            spans[current], current = second - started, None
    return spans


def back_to_committed(project: Path) -> None:
    """The committed workspace (λ = 0) and no run cache, so the next `-S wd=3` trains again what a first one does."""
    git(project, "checkout", "--", ".")
    dvc(project, "checkout", "--with-deps", *SYNTHETIC_BRANCH)
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)


def synthetic(project: Path, repeat: int) -> dict:
    dvc(project, "repro", *SYNTHETIC_BRANCH, timeout=3600)  # warm: outputs, run cache, MLflow store exist
    commit_all(project, "reproduced")
    noops, exps = [], []
    for _ in range(repeat):
        load = os.getloadavg()[0]
        noop, _, _ = timed_lines(project, "repro", *SYNTHETIC_BRANCH)
        noops.append(noop)
        exp, cpu, lines = timed_lines(project, "exp", "run", "-S", "wd=3", *SYNTHETIC_BRANCH)
        spans = stage_spans(lines)
        exps.append(exp)
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in spans.items())
        print(
            f"`dvc exp run -S wd=3`: {exp:5.1f} s wall, {cpu:5.1f} s CPU, load {load:.2f} before "
            f"| stages (s): {stages} "
            f"| DVC itself {exp - sum(spans.values()):.1f} | no-op `dvc repro`: {noop:.2f} s"
        )
        back_to_committed(project)
    print(
        f"no-op `dvc repro`                     : {min(noops):6.2f} s best, "
        f"{statistics.median(noops):.2f} s median of {repeat}"
    )
    print(
        f"`dvc exp run -S wd=3`                 : {min(exps):6.1f} s best, "
        f"{statistics.median(exps):.1f} s median of {repeat}"
    )
    return {"noop_repro_s": [round(t, 2) for t in noops], "exp_run_wd3_s": [round(t, 1) for t in exps]}


def use_standin(project: Path, archive: Path, md5: str) -> dict:
    """Point the project's CIFAR-10 download at the local stand-in archive and commit it; its params."""
    params = load_params(project / "params.yaml")
    set_key(params, "cifar10.download.url", str(archive))
    set_key(params, "cifar10.download.md5", md5)
    write_params(project / "params.yaml", params)
    commit_all(project, "local CIFAR-10 stand-in")
    return params


def cifar(project: Path, archive: Path, md5: str, keep: Path | None) -> dict:
    params = use_standin(project, archive, md5)
    load = os.getloadavg()[0]
    total, cpu, lines = timed_lines(project, "repro", *CIFAR_BRANCH)
    # CPU seconds beside wall: on a machine shared with other jobs the wall time is an upper bound, the CPU time is not
    print(
        f"CIFAR-10 branch `dvc repro {' '.join(CIFAR_BRANCH)}`: {total:6.0f} s wall, {cpu:6.0f} s CPU "
        f"(load {load:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    stages = {name: round(seconds, 1) for name, seconds in stage_spans(lines).items()}
    for name, seconds in stages.items():
        print(f"  {name:<24} {seconds:6.0f} s")
    if keep is not None:  # what the time bought: the pages, figures and metrics
        for made in ("reports", "metrics", "results"):
            shutil.copytree(project / made, keep / made, dirs_exist_ok=True)
    return {
        "cifar10_branch_s": round(total),
        "cifar10_branch_cpu_s": round(cpu),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "stages_s": stages,
        "params": {key: params["cifar10"][key] for key in ("seeds", "data", "model", "train", "strengths", "plain")},
    }


def epoch_split() -> None:
    """One epoch of the current trainer at the default params: training vs evaluating (subsets, every image)."""
    import torch

    from wdlab.cifar10.data import Split, Splits, curve_subsets, split_indices
    from wdlab.cifar10.standin import make_batches
    from wdlab.cifar10.training import Trainer, measure
    from wdlab.device import device_formats, pick_device
    from wdlab.settings import load_settings

    settings = load_settings(ROOT / "params.yaml")
    study = settings.cifar10
    batches = make_batches(10_000, difficulty="ci")
    images = torch.cat([torch.from_numpy(b[b"data"]) for n, b in batches.items() if n.startswith("data_batch")]).view(
        -1, 3, 32, 32
    )
    labels = torch.cat([torch.tensor(b[b"labels"]) for n, b in batches.items() if n.startswith("data_batch")])
    test = batches["test_batch"]
    train_idx, valid_idx = split_indices(labels, study.data.train_subset, study.data.valid_size, study.data.split_seed)
    formats = device_formats(pick_device(settings.device), study.train.mixed_precision)
    splits = Splits(
        Split(images[train_idx], labels[train_idx]),
        Split(images[valid_idx], labels[valid_idx]),
        Split(torch.from_numpy(test[b"data"]).view(-1, 3, 32, 32), torch.tensor(test[b"labels"])),
        (),
    ).to(formats.device)
    trainer = Trainer.create(study, study.regularizer, study.wd, study.seeds[0], formats, n_train=len(train_idx))
    curves = curve_subsets(splits, study.data.curve_subset, study.data.split_seed)
    start = time.perf_counter()
    trainer.train_epoch(splits.train)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    measure(trainer.model, curves, formats)
    curves_s = time.perf_counter() - start
    start = time.perf_counter()
    measure(trainer.model, splits, formats)
    full_s = time.perf_counter() - start
    print(
        f"one epoch at the default params ({formats.describe()}, {len(train_idx):,} training images): "
        f"training {train_s:.1f} s, "
        f"curves on {study.data.curve_subset:,}-image subsets {curves_s:.1f} s, every image {full_s:.1f} s "
        f"(evaluation {curves_s / (train_s + curves_s):.0%} of an epoch, was {full_s / (train_s + full_s):.0%})"
    )


def study_of(stage: str, images: list[str]) -> str:
    """The study a stage of dvc.yaml belongs to: the image study its key names (train_images@cifar10-l2), else the
    synthetic one (validate included: it is seconds)."""
    key = stage.partition("@")[2].partition("-")[0]
    return key if key in images else "synthetic"


def default_repro(project: Path, archive: Path, md5: str) -> dict:
    """The whole default `dvc repro` from nothing: its wall and CPU time, each stage's, and each study's sum."""
    params = use_standin(project, archive, md5)
    load = os.getloadavg()[0]
    total, cpu, lines = timed_lines(project, "repro")
    stages = {name: round(seconds, 1) for name, seconds in stage_spans(lines).items()}
    studies: dict[str, float] = {}
    for name, seconds in stages.items():
        study = study_of(name, params["images"])
        studies[study] = round(studies.get(study, 0.0) + seconds, 1)
    print(
        f"default `dvc repro`: {total:6.0f} s wall ({total / 60:.1f} min), {cpu:6.0f} s CPU "
        f"(load {load:.2f} before, {os.getloadavg()[0]:.2f} after); per study (s): {studies}"
    )
    for name, seconds in stages.items():
        print(f"  {name:<32} {seconds:6.0f} s")
    return {
        "default_repro_s": round(total),
        "default_repro_min": round(total / 60, 1),
        "default_repro_cpu_s": round(cpu),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "studies_s": studies,
        "stages_s": stages,
        "images": params["images"],
    }


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rev", default="HEAD", help="the git revision to measure (default: HEAD)")
    cli.add_argument(
        "--cifar", action="store_true", help="also the default CIFAR-10 branch on a full-size stand-in (minutes)"
    )
    cli.add_argument("--cifar-only", action="store_true", help="the CIFAR-10 branch alone, no synthetic runs")
    cli.add_argument(
        "--default",
        action="store_true",
        help="the whole default `dvc repro` from nothing (every study; written to default_repro-<machine>.json)",
    )
    cli.add_argument(
        "--keep", type=Path, help="copy the CIFAR-10 branch's reports, metrics and results into this folder"
    )
    cli.add_argument(
        "--repeat", type=int, default=3, help="runs of `dvc exp run -S wd=3` and of the no-op `dvc repro` (default: 3)"
    )
    args = cli.parse_args()
    machine = this_machine()
    print(machine.describe())
    scratch = Path(tempfile.mkdtemp(prefix="wd-lab-bench-"))
    figures = {"revision_measured": git(ROOT, "rev-parse", "--short", args.rev).stdout.strip()}
    try:
        project = checkout(args.rev, scratch / "project")
        print(f"revision {args.rev}: {figures['revision_measured']}")
        if args.default:
            archive = build_archive(scratch / "serve", images_per_batch=10_000, difficulty="ci")
            figures |= default_repro(project, archive.path, archive.md5)
            print(f"written: {write_result('default_repro', machine, figures)}")
            return
        if not args.cifar_only:
            figures |= synthetic(project, args.repeat)
        if args.cifar or args.cifar_only:
            archive = build_archive(scratch / "serve", images_per_batch=10_000, difficulty="ci")
            figures |= cifar(project, archive.path, archive.md5, args.keep)
        if args.rev == "HEAD":
            epoch_split()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"written: {write_result('pipeline', machine, figures)}")


if __name__ == "__main__":
    main()
