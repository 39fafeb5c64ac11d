"""Fetching and reading Fashion-MNIST: Debian's installed copy, a stand-in in the idx format served from 127.0.0.1,
and each hostile file refused with one line that names it and the fix, nothing written and earlier results intact."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from wdlab.cifar10.standin import served_directory
from wdlab.datasets import fashion_mnist as fm
from wdlab.datasets.definition import Resource, StandIn
from wdlab.datasets.idx import idx_bytes, write_gzipped
from wdlab.datasets.sources import fetch
from wdlab.errors import StageError
from wdlab.workspace import free_port

REPO = Path(__file__).resolve().parents[1]
DEBIAN = Path(fm.DEBIAN_COPY)
needs_debian_copy = pytest.mark.skipif(
    not (DEBIAN / f"{fm.TRAIN_IMAGES}.gz").is_file(),
    reason=f"no Fashion-MNIST in {DEBIAN}: `apt-get install dataset-fashion-mnist` (Debian's package) to run this",
)


def files_under(directory: Path) -> list[str]:
    """Every file below `directory`, hidden temp files included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def content(standin: StandIn, name: str) -> bytes:
    return gzip.decompress((standin.folder / f"{name}.gz").read_bytes())


def with_file(standin: StandIn, name: str, data: bytes, declared: bool = True) -> StandIn:
    """The stand-in with `name` holding `data` (gzipped); `declared`: its checksum updated to match, as a stand-in
    declares its own, so only the reader's checks stand between the file and the output."""
    write_gzipped(standin.folder / f"{name}.gz", data)
    if not declared:
        return standin
    resources = tuple(
        Resource(name, hashlib.md5(data).hexdigest(), len(data)) if r.file == name else r for r in standin.resources
    )
    return StandIn(standin.folder, resources)


@pytest.fixture
def standin(tmp_path: Path) -> StandIn:
    return fm.build_standin(tmp_path / "mirror", train_images=60, test_images=20, seed=3)


@needs_debian_copy
def test_debian_copy_verifies_and_reads_as_60000_and_10000_grayscale_28_by_28(tmp_path: Path):
    """The default sources try Debian's copy first: its recompressed .gz files verify by their content's md5."""
    out = fetch(fm.FASHION_MNIST, tmp_path / "fashion-mnist")  # the dataset's own mirrors: no URL given

    assert files_under(out) == sorted(r.file for r in fm.RESOURCES)  # decompressed, verified, nothing else
    data = fm.read(out)
    assert data.train_images.shape == (60_000, 1, 28, 28) and data.test_images.shape == (10_000, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes[data.train_labels[0]] == "Ankle boot" and data.train_labels[:5].tolist() == [9, 0, 0, 3, 0]
    pixels = data.train_images.double() / 255
    assert pixels.mean().item() == pytest.approx(fm.FASHION_MNIST.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(fm.FASHION_MNIST.std[0], abs=1e-4)
    assert torch.equal(fm.read(DEBIAN).train_images, data.train_images), "the reader takes the .gz files as they are"


def test_standin_is_reproducible_in_the_idx_format_and_reads_back(tmp_path: Path, standin: StandIn):
    again = fm.build_standin(tmp_path / "again", train_images=60, test_images=20, seed=3)
    assert {p.name: p.read_bytes() for p in standin.folder.iterdir()} == {
        p.name: p.read_bytes() for p in again.folder.iterdir()
    }
    labels = content(standin, fm.TRAIN_LABELS)
    assert labels[:8] == struct.pack(">HBBI", 0, 0x08, 1, 60)  # magic 0x00000801, then the count
    assert content(standin, fm.TRAIN_IMAGES)[:16] == struct.pack(">HBB3I", 0, 0x08, 3, 60, 28, 28)

    data = fm.read(fetch(fm.FASHION_MNIST, tmp_path / "out", [str(standin.folder)], standin.resources))

    assert data.train_images.shape == (60, 1, 28, 28) and data.test_images.shape == (20, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6] * 10 and data.classes == fm.CLASSES
    fm.FASHION_MNIST.check(data, "the stand-in")


def test_download_over_http_falls_back_past_a_mirror_without_the_files(tmp_path: Path, standin: StandIn):
    """A mirror that answers 404 is skipped; the next one's files arrive verified, the same as the local copy's."""
    with served_directory(standin.folder) as base, served_directory(tmp_path) as empty:
        out = fetch(fm.FASHION_MNIST, tmp_path / "out", [f"{empty}/nothing-here", base], standin.resources)
    local = fm.read(standin.folder)
    served = fm.read(out)
    assert all(torch.equal(a, b) for a, b in zip(served[:4], local[:4]))


def test_a_file_url_mirror_works(tmp_path: Path, standin: StandIn):
    out = fetch(fm.FASHION_MNIST, tmp_path / "out", [standin.folder.as_uri()], standin.resources)
    assert len(fm.read(out).test_labels) == 20


def ubyte_header(*shape: int) -> bytes:
    return struct.pack(f">HBB{len(shape)}I", 0, 0x08, len(shape), *shape)


def hostile(standin: StandIn, damage: str) -> tuple[StandIn, str, str]:
    """The stand-in with one file damaged as named; the damaged file and a fragment of the expected message."""
    images, labels = content(standin, fm.TRAIN_IMAGES), content(standin, fm.TRAIN_LABELS)
    if damage == "wrong magic":  # a labels file where the images belong
        return with_file(standin, fm.TRAIN_IMAGES, labels), fm.TRAIN_IMAGES, "not the idx magic 00000803"
    if damage == "truncated":
        return with_file(standin, fm.TRAIN_IMAGES, images[:-100]), fm.TRAIN_IMAGES, "it is truncated"
    if damage == "oversized":
        return with_file(standin, fm.TRAIN_IMAGES, images + b"\0" * 784), fm.TRAIN_IMAGES, "more than the 47,040"
    if damage == "counts disagree":
        fewer = idx_bytes(np.frombuffer(labels[8:], np.uint8)[:-1])
        return with_file(standin, fm.TRAIN_LABELS, fewer), fm.TRAIN_IMAGES, "60 images but"
    if damage == "labels out of range":
        wrong = bytearray(labels)
        wrong[-1] = 10
        return with_file(standin, fm.TRAIN_LABELS, bytes(wrong)), fm.TRAIN_LABELS, "labels up to 10, expected 0 to 9"
    if damage == "wrong image size":
        small = ubyte_header(60, 27, 27) + bytes(60 * 27 * 27)
        return with_file(standin, fm.TRAIN_IMAGES, small), fm.TRAIN_IMAGES, "27×27 images, not 28×28"
    if damage == "header declaring a bomb":  # a million images: refused before a byte of it is decompressed
        claim = ubyte_header(1_000_000, 28, 28) + bytes(1 << 16)
        return with_file(standin, fm.TRAIN_IMAGES, claim), fm.TRAIN_IMAGES, "more than the 134,217,728 allowed"
    raise ValueError(damage)


DAMAGES = [
    "wrong magic",
    "truncated",
    "oversized",
    "counts disagree",
    "labels out of range",
    "wrong image size",
    "header declaring a bomb",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_hostile_file_is_refused_with_its_name_and_the_fix_and_nothing_written(damage, tmp_path, standin):
    out = fetch(fm.FASHION_MNIST, tmp_path / "out", [str(standin.folder)], standin.resources)  # an earlier result
    earlier = {name: (out / name).read_bytes() for name in files_under(out)}
    damaged, culprit, problem = hostile(standin, damage)

    with pytest.raises(StageError) as caught:
        fetch(fm.FASHION_MNIST, out, [str(damaged.folder)], damaged.resources)
    message = str(caught.value)
    assert "\n" not in message and problem in message
    assert f"{damaged.folder}/{culprit}.gz" in message, "names the file as it came from its source"
    assert "fetch it again" in message
    assert {name: (out / name).read_bytes() for name in files_under(out)} == earlier
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp folder left behind"

    with pytest.raises(StageError, match=problem):  # the reader refuses the folder itself just the same
        fm.read(damaged.folder)


def test_content_unlike_its_checksum_is_refused_naming_both_md5s(tmp_path, standin):
    images = bytearray(content(standin, fm.TEST_IMAGES))
    images[-1] ^= 0xFF
    changed = with_file(standin, fm.TEST_IMAGES, bytes(images), declared=False)
    expected = next(r for r in standin.resources if r.file == fm.TEST_IMAGES).md5

    with pytest.raises(StageError) as caught:
        fetch(fm.FASHION_MNIST, tmp_path / "out", [str(changed.folder)], changed.resources)

    message = str(caught.value)
    assert f"md5 {hashlib.md5(images).hexdigest()}, not {fm.TEST_IMAGES}'s" in message and expected in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_decompression_bomb_stops_at_the_declared_size(tmp_path, standin):
    """32 MiB of zeros in a 32 KiB .gz where 28 bytes of labels belong: the copy stops one byte past them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    bomb = packer.compress(ubyte_header(1 << 28))
    zeros = bytes(1 << 20)
    bomb += b"".join(packer.compress(zeros) for _ in range(32)) + packer.flush()
    (standin.folder / f"{fm.TEST_LABELS}.gz").write_bytes(bomb)

    with served_directory(standin.folder) as base, pytest.raises(StageError) as caught:
        fetch(fm.FASHION_MNIST, tmp_path / "out", [base], standin.resources)

    assert "holds more than the 28 bytes of t10k-labels-idx1-ubyte (a decompression bomb" in str(caught.value)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unreachable_mirrors_are_each_named_with_the_install_hint(tmp_path):
    with pytest.raises(StageError) as caught:
        fetch(fm.FASHION_MNIST, tmp_path / "out", [str(tmp_path / "nowhere"), f"http://127.0.0.1:{free_port()}"])
    message = str(caught.value)
    assert "nowhere/train-images-idx3-ubyte (No such file" in message and "Connection refused" in message
    assert message.endswith(fm.INSTALL_HINT) and not (tmp_path / "out").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wdlab.datasets", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@needs_debian_copy
def test_fetch_command_writes_the_folder_and_exits_0(tmp_path):
    done = cli("fetch", "fashion-mnist", "--out", str(tmp_path / "fashion"), "--source", str(DEBIAN))
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "fashion") == sorted(r.file for r in fm.RESOURCES)


def test_fetch_command_failure_is_one_line_and_exit_2(tmp_path):
    done = cli("fetch", "fashion-mnist", "--out", str(tmp_path / "fashion"), "--source", str(tmp_path / "none"))
    assert done.returncode == 2 and done.stderr.startswith("error: no source holds fashion-mnist's")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "fashion").exists()
    unknown = cli("fetch", "mnist", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "choose one of cifar10, fashion-mnist" in unknown.stderr


# ── the pipeline's download stage (download@fashion_mnist) ─────────────────────────────────────────────────────────


def run_download_stage(url: str | None) -> None:
    """`python -m stages.download --study fashion_mnist`'s main() with the paths dvc.yaml gives it and
    `fashion_mnist.download.url` set to `url` (None: the definition's sources, Debian's copy first)."""
    from stages import download as download_stage
    from tests.helpers.stages import stage_args
    from wdlab.settings import ImageDownload, load_settings

    settings = load_settings(REPO / "params.yaml")
    study = settings.fashion_mnist.model_copy(update={"download": ImageDownload(url=url)})
    args = download_stage.parser().parse_args(stage_args("download@fashion_mnist"))
    download_stage.main(settings.model_copy(update={"fashion_mnist": study}), args)


@needs_debian_copy
def test_the_stage_stores_the_official_files_and_reuses_its_verified_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    run_download_stage(None)
    train = torch.load("data/fashion_mnist/train.pt", weights_only=True)
    assert train["images"].shape == (60_000, 1, 28, 28) and train["images"].dtype == torch.uint8
    meta = json.loads(Path("data/fashion_mnist/meta.json").read_text())
    assert meta["dataset"] == "fashion-mnist" and meta["official"] is True
    assert meta["files"] == {r.file: r.md5 for r in fm.FASHION_MNIST.resources}
    assert (meta["n_train"], meta["n_test"]) == (60_000, 10_000)
    written = Path("data/fashion_mnist/train.pt").read_bytes()

    # the verified copy in data/downloads is read again without asking any source: one that holds nothing is fine
    run_download_stage((tmp_path / "no-mirror-here").as_uri())
    assert Path("data/fashion_mnist/train.pt").read_bytes() == written, "the same bytes: DVC sees no change"


def test_the_stage_refuses_files_that_are_not_the_official_ones_and_keeps_earlier_data(tmp_path, monkeypatch, standin):
    """A mirror serving other content (here the generated stand-in) fails on the first file's md5, in one line
    naming it; data/fashion_mnist stays as it was and nothing enters the verified cache."""
    project = tmp_path / "project"
    (project / "data/fashion_mnist").mkdir(parents=True)
    (project / "data/fashion_mnist/meta.json").write_text("earlier\n")
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with served_directory(standin.folder) as base:
        with pytest.raises(StageError) as caught:
            run_download_stage(base)
    message = str(caught.value)
    assert "\n" not in message and "md5" in message and base in message
    assert files_under(project / "data") == ["fashion_mnist/meta.json"]
    assert (project / "data/fashion_mnist/meta.json").read_text() == "earlier\n"


def test_an_md5_for_a_dataset_verified_file_by_file_is_refused():
    from wdlab.settings import ParamsError, parse_settings
    from wdlab.workspace import load_params

    params = load_params()
    params["fashion_mnist"]["download"]["md5"] = "0" * 32
    with pytest.raises(
        ParamsError, match=r"^params.yaml: fashion_mnist: download.md5 = '0+': .* takes no md5: set it to null$"
    ):
        parse_settings(params)
