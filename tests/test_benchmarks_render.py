"""The benchmarks' figures reach docs/benchmarks.md from their results files: the writer every benchmark uses
(benchmarks.machine.write_result) and the renderer (python -m benchmarks.render), on made-up results; no benchmark
runs."""

from __future__ import annotations

import json

import pytest

from benchmarks import render
from benchmarks.machine import Machine, write_result

CPU = Machine(
    cpu="AMD EPYC",
    cores=2,
    torch_threads=2,
    cpu_capability="AVX512",
    bf16_native=False,
    onednn_isa_cap="AVX512_CORE",
    gpu=None,
    torch="2.14.1",
    revision="abc1234",
    date="2026-11-30T08:30:42+00:00",
    load=5.4,
)
GPU = Machine(
    cpu="Intel Xeon",
    cores=16,
    torch_threads=16,
    cpu_capability="AVX512",
    bf16_native=True,
    onednn_isa_cap=None,
    gpu="NVIDIA H200",
    torch="2.14.1",
    revision="def5678-dirty",
    date="2026-12-01T10:00:00+00:00",
    load=0.5,
)
BEFORE = "# Benchmarks\n\nProse by hand | with a pipe.\n\n## Results\n\n"
AFTER = "\n\nA closing line by hand.\n"


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    write_result(
        "pipeline",
        CPU,
        {"noop_repro_s": [0.6123, 0.71], "stages_s": {"train_images@l2": 1246.44, "report": 4.2}, "branch_s": 3318},
        results=folder,
    )
    write_result(
        "gpu_check",
        GPU,
        {"peak": {"tflops": 612.345678, "kernel": "8192² bf16 matmul"}, "memory": None, "images": 123456.7},
        details={"device": "cuda", "cuda": "13.0"},
        results=folder,
    )
    return folder


@pytest.fixture
def page(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(BEFORE + render.START + "\nstale tables\n" + render.END + AFTER)
    return path


def test_every_benchmark_writes_its_figures_with_its_machine(results):
    assert sorted(path.name for path in results.iterdir()) == [
        "gpu_check-gpu-nvidia-h200.json",
        "pipeline-cpu2-fp32.json",
    ]
    record = json.loads((results / "gpu_check-gpu-nvidia-h200.json").read_text())
    assert record["machine"]["gpu"] == "NVIDIA H200" and record["machine"]["cuda"] == "13.0"
    assert record["figures"]["peak"]["kernel"] == "8192² bf16 matmul"
    with pytest.raises(ValueError, match="no '-'"):
        write_result("gpu-check", CPU, {}, results=results)


def test_the_page_gets_a_table_per_benchmark_headed_by_its_machine(results, page):
    assert render.render(results, page)
    text = page.read_text()
    assert text.startswith(BEFORE) and text.endswith(render.END + AFTER), "text outside the markers is untouched"
    generated = text[len(BEFORE) : -len(AFTER)]
    assert "stale tables" not in generated
    # machine classes sorted: cpu2-fp32 before gpu-nvidia-h200
    assert generated.index("### Machine class `cpu2-fp32`") < generated.index("### Machine class `gpu-nvidia-h200`")
    assert (
        "Measured on: AMD EPYC, 2 cores (2 torch threads), PyTorch 2.14.1 CPU capability AVX512, bf16 not native, "
        "oneDNN capped at AVX512_CORE; revision abc1234, 2026-11-30T08:30:42+00:00, load 5.40 "
        "(load above the core count: times are upper bounds)"
    ) in generated
    assert (
        "Measured on: Intel Xeon, 16 cores (16 torch threads), PyTorch 2.14.1 CPU capability AVX512, bf16 native, "
        "GPU NVIDIA H200; revision def5678-dirty, 2026-12-01T10:00:00+00:00, load 0.50; device cuda, cuda 13.0\n"
    ) in generated
    for row in (
        "| noop_repro_s | 0.6123, 0.71 |",  # a list: one cell
        "| stages_s.train_images@l2 | 1246 |",  # nested: dotted keys; 4 significant digits
        "| branch_s | 3318 |",
        "| peak.tflops | 612.3 |",
        "| peak.kernel | 8192² bf16 matmul |",
        "| memory | – |",
        "| images | 123500 |",
    ):
        assert row in generated, row
    assert generated.count("| figure | value |") == 2


def test_rendering_again_changes_nothing(results, page):
    render.render(results, page)
    first = page.read_text()
    assert not render.render(results, page)
    assert page.read_text() == first


def test_a_page_without_markers_is_refused_clearly(results, tmp_path):
    bare = tmp_path / "bare.md"
    bare.write_text("# Benchmarks\n\nno markers here\n")
    with pytest.raises(render.MarkerError, match="exactly once") as refused:
        render.render(results, bare)
    assert render.START in str(refused.value) and render.END in str(refused.value)
    assert bare.read_text() == "# Benchmarks\n\nno markers here\n"
    swapped = tmp_path / "swapped.md"
    swapped.write_text(f"{render.END}\n{render.START}\n")
    with pytest.raises(render.MarkerError, match="comes before"):
        render.render(results, swapped)


def test_the_docs_page_is_rendered_from_the_committed_results():
    page = render.PAGE.read_text()
    assert render.spliced(page, render.generated(render.RESULTS)) == page, "run `python -m benchmarks.render`"
