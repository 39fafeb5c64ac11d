"""Downloading CIFAR-10: the real download path against a tiny archive served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shlex
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from stages import download as download_stage
from tests.helpers.stages import stage, stage_args
from wdlab.cifar10.archive import cached_archive_path, file_md5
from wdlab.cifar10.standin import CLASSES, TRAIN_BATCHES, FixtureArchive, build_archive, make_batches, py2_pickle
from wdlab.datasets.registry import load_stored
from wdlab.errors import StageError, StageInputError
from wdlab.settings import ImageDownload, Settings, load_settings
from wdlab.workspace import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGES_PER_BATCH = 20
SEED = 7
ARCHIVE_URL_PATH = "/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
STAGE_ARGS = download_stage.parser().parse_args(stage_args("download@cifar10"))  # the paths dvc.yaml gives the stage
CIFAR_DATA, ARCHIVE_CACHE = STAGE_ARGS.out, STAGE_ARGS.cache


# ── a real HTTP server, and how each test runs the stage ──────────────────────────────────────────


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves `server.files`; `server.mode` breaks the response the ways a flaky network does."""

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        body = self.server.files.get(self.path)
        if self.server.mode == "hang-up":  # close the connection before any response
            self.close_connection = True
            return
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))  # the whole size, whatever is sent below
        self.end_headers()
        sent = {"whole": body, "truncate": body[: len(body) // 2], "headers-only": b""}[self.server.mode]
        self.wfile.write(sent)
        self.close_connection = True

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.files, httpd.hits, httpd.mode = {}, [], "whole"
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> FixtureArchive:
    return build_archive(tmp_path_factory.mktemp("fixture"), IMAGES_PER_BATCH, SEED)


@pytest.fixture
def serve_archive(server: ThreadingHTTPServer, archive: FixtureArchive) -> str:
    server.files[ARCHIVE_URL_PATH] = archive.path.read_bytes()
    return server.url(ARCHIVE_URL_PATH)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project directory: stages write data/... relative to the working directory."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings(REPO / "params.yaml")


@pytest.fixture
def download(base_settings: Settings, workspace: Path) -> Callable[[str, str], None]:
    """Run the stage's main() with `cifar10.download` set to (url, md5)."""

    def run(url: str, md5: str) -> None:
        cifar10 = base_settings.cifar10.model_copy(update={"download": ImageDownload(url=url, md5=md5)})
        download_stage.main(base_settings.model_copy(update={"cifar10": cifar10}), STAGE_ARGS)

    return run


def files_under(directory: Path) -> list[str]:
    """Every file below `directory`, hidden temp files included."""
    return (
        sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())
        if directory.exists()
        else []
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in files_under(directory)}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def expect_failure(run: Callable[[], None], *fragments: str) -> str:
    """The stage fails with one line that contains every fragment."""
    with pytest.raises(StageError) as caught:
        run()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


# ── success ───────────────────────────────────────────────────────────────────────────────────────


def test_http_download_writes_uint8_tensors_in_channel_row_column_layout(
    download, serve_archive, server, archive, workspace
):
    download(serve_archive, archive.md5)

    raw = make_batches(IMAGES_PER_BATCH, SEED)
    n = IMAGES_PER_BATCH
    train = torch.load(CIFAR_DATA / "train.pt", weights_only=True)
    test = torch.load(CIFAR_DATA / "test.pt", weights_only=True)
    assert train["images"].dtype == torch.uint8 and train["images"].shape == (5 * n, 3, 32, 32)
    assert train["images"].is_contiguous()
    assert test["images"].dtype == torch.uint8 and test["images"].shape == (n, 3, 32, 32)
    assert train["labels"].dtype == torch.int64
    assert train["labels"].tolist() == [label for name in TRAIN_BATCHES for label in raw[name][b"labels"]]
    assert test["labels"].tolist() == raw["test_batch"][b"labels"]

    # Image 3 of data_batch_2 is training image n + 3; channel c, row h, column w sit at c·1024 + h·32 + w.
    row = raw["data_batch_2"][b"data"][3]
    assert train["images"][n + 3, 2, 5, 7] == row[2 * 1024 + 5 * 32 + 7]
    expected = np.array([[[row[c * 1024 + h * 32 + w] for w in range(32)] for h in range(32)] for c in range(3)])
    assert np.array_equal(train["images"][n + 3].numpy(), expected)
    assert np.array_equal(test["images"][0].numpy().reshape(-1), raw["test_batch"][b"data"][0])

    meta = json.loads((CIFAR_DATA / "meta.json").read_text())
    assert meta == {
        "dataset": "cifar10",
        "classes": list(CLASSES),
        "source_md5": archive.md5,
        "official": False,  # a generated archive: its md5 is not the official one's
        "n_train": 5 * n,
        "n_test": n,
    }
    assert server.hits == [ARCHIVE_URL_PATH]
    assert files_under(workspace / "data") == [f"cifar10/{name}" for name in ("meta.json", "test.pt", "train.pt")] + [
        f"downloads/cifar-10-python-{archive.md5}.tar.gz"
    ]


def test_load_stored_returns_what_the_stage_wrote(download, serve_archive, archive):
    download(serve_archive, archive.md5)
    train_images, train_labels, test_images, test_labels, classes = load_stored(CIFAR_DATA)
    train = torch.load(CIFAR_DATA / "train.pt", weights_only=True)
    assert torch.equal(train_images, train["images"]) and torch.equal(train_labels, train["labels"])
    assert test_images.shape == (IMAGES_PER_BATCH, 3, 32, 32) and test_labels.shape == (IMAGES_PER_BATCH,)
    assert classes == CLASSES


@pytest.mark.parametrize("form", ["file:// URL", "absolute path", "relative path"])
def test_local_copy_works_behind_a_firewall(form, download, archive, workspace):
    local = workspace / "mirror" / "cifar.tar.gz"
    local.parent.mkdir()
    local.write_bytes(archive.path.read_bytes())
    url = {"file:// URL": local.as_uri(), "absolute path": str(local), "relative path": "mirror/cifar.tar.gz"}[form]

    download(url, archive.md5)

    assert load_stored(CIFAR_DATA).train_images.shape == (5 * IMAGES_PER_BATCH, 3, 32, 32)
    assert local.exists()  # the user's copy is read, never moved


def test_verified_archive_is_not_downloaded_again(download, serve_archive, server, archive, workspace):
    download(serve_archive, archive.md5)
    download(serve_archive, archive.md5)
    assert server.hits == [ARCHIVE_URL_PATH]

    # The md5 names the content: with the archive cached, an unreachable URL does not matter.
    download(f"http://127.0.0.1:{free_port()}/gone.tar.gz", archive.md5)
    assert server.hits == [ARCHIVE_URL_PATH]


def test_damaged_cached_archive_is_downloaded_again(download, serve_archive, server, archive):
    cached = cached_archive_path(ARCHIVE_CACHE, archive.md5)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(archive.path.read_bytes()[:1000])

    download(serve_archive, archive.md5)

    assert server.hits == [ARCHIVE_URL_PATH]
    assert file_md5(cached) == archive.md5


# ── failures: one clear line, nothing left behind ─────────────────────────────────────────────────


def test_checksum_mismatch_names_both_md5s_and_keeps_the_earlier_dataset(download, serve_archive, archive, workspace):
    download(serve_archive, archive.md5)
    earlier = snapshot(CIFAR_DATA)
    wrong = "0123456789abcdef0123456789abcdef"

    expect_failure(
        lambda: download(serve_archive, wrong), f"expected md5 {wrong}", f"got {archive.md5}", "cifar10.download.md5"
    )

    assert snapshot(CIFAR_DATA) == earlier
    # Only the earlier verified archive remains: the mismatching download and any partial file are gone.
    assert files_under(ARCHIVE_CACHE) == [f"cifar-10-python-{archive.md5}.tar.gz"]


@pytest.mark.parametrize("source", ["HTTP 404", "connection refused", "missing file:// URL", "missing local path"])
def test_unreachable_source_names_the_url_and_the_param(source, download, server, workspace):
    url = {
        "HTTP 404": server.url("/not-here.tar.gz"),
        "connection refused": f"http://127.0.0.1:{free_port()}/cifar-10-python.tar.gz",
        "missing file:// URL": (workspace / "nowhere.tar.gz").as_uri(),
        "missing local path": str(workspace / "nowhere.tar.gz"),
    }[source]
    hint = {"HTTP 404": "HTTP 404", "connection refused": "Connection refused"}.get(source, "No such file")

    expect_failure(
        lambda: download(url, OFFICIAL_MD5), url.removeprefix("file://"), hint, "set `cifar10.download.url` to a mirror"
    )

    assert files_under(workspace / "data") == []


@pytest.mark.parametrize("mode", ["truncate", "headers-only", "hang-up"])
def test_broken_transfer_fails_cleanly(mode, download, serve_archive, server, archive, workspace):
    server.mode = mode
    hint = "Remote end closed connection" if mode == "hang-up" else "cut short"
    expect_failure(lambda: download(serve_archive, archive.md5), serve_archive, hint, "cifar10.download.url")
    assert files_under(workspace / "data") == []


def _damaged(original: bytes, damage: str) -> bytes:
    if damage == "garbage bytes":
        return b"not a tarball at all " * 1000
    if damage == "first half":
        return original[: len(original) // 2]
    flipped = bytearray(original)  # "one flipped byte": still a gzip stream, caught by its CRC
    flipped[len(original) // 2] ^= 0xFF
    return bytes(flipped)


@pytest.mark.parametrize("damage", ["garbage bytes", "first half", "one flipped byte"])
def test_corrupt_archive_with_matching_md5_fails_cleanly(damage, download, archive, workspace):
    corrupt = workspace / "corrupt.tar.gz"
    corrupt.write_bytes(_damaged(archive.path.read_bytes(), damage))

    expect_failure(
        lambda: download(str(corrupt), md5_of(corrupt)),
        f"the archive with md5 {md5_of(corrupt)} is not a readable .tar.gz",
    )

    assert files_under(workspace / "data") == []


def test_archive_missing_a_batch_fails_cleanly(download, workspace, tmp_path):
    incomplete = build_archive(tmp_path / "incomplete", IMAGES_PER_BATCH, SEED, omit=["data_batch_3"])
    expect_failure(lambda: download(str(incomplete.path), incomplete.md5), "cifar-10-batches-py/data_batch_3")
    assert files_under(workspace / "data") == []


def _batch_2_with(**changes) -> dict:
    batch = make_batches(IMAGES_PER_BATCH, SEED)["data_batch_2"]
    return batch | {key.encode(): value for key, value in changes.items()}


@pytest.mark.parametrize(
    ("member", "content", "problem"),
    [
        ("data_batch_2", _batch_2_with(data=np.zeros((IMAGES_PER_BATCH, 3000), np.uint8)), "uint8 [20, 3000]"),
        ("data_batch_2", _batch_2_with(data=np.zeros((IMAGES_PER_BATCH, 3072), np.float32)), "float32 [20, 3072]"),
        ("data_batch_2", _batch_2_with(labels=[10] * IMAGES_PER_BATCH), "labels from 10 to 10"),
        ("data_batch_2", _batch_2_with(labels=[0] * (IMAGES_PER_BATCH - 1)), "labels list of 19 for 20 images"),
        ("data_batch_2", [1, 2, 3], "is not a dict"),
        ("batches.meta", {b"label_names": [b"cat"]}, "label_names"),
    ],
    ids=["3000 values per image", "float pixels", "label 10", "label count", "not a dict", "too few class names"],
)
def test_batch_with_wrong_shape_or_labels_fails_cleanly(member, content, problem, download, workspace, tmp_path):
    bad = build_archive(tmp_path / "bad", IMAGES_PER_BATCH, SEED, replace={member: py2_pickle(content)})
    expect_failure(lambda: download(str(bad.path), bad.md5), f"cifar-10-batches-py/{member}", problem)
    assert files_under(workspace / "data") == []


def test_md5_param_that_is_not_an_md5_names_the_key(download, serve_archive, server):
    expect_failure(lambda: download(serve_archive, "latest"), "cifar10.download.md5")
    assert server.hits == []


# ── hostile archives ──────────────────────────────────────────────────────────────────────────────


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class _ExecsPython(_RunsShell):
    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize(
    ("payload", "named"), [(_RunsShell, "system"), (_ExecsPython, "exec")], ids=["os.system", "exec"]
)
def test_pickle_that_runs_code_is_refused(payload, named, download, workspace, tmp_path):
    marker = tmp_path / "pwned"
    batch = make_batches(IMAGES_PER_BATCH, SEED)["data_batch_1"] | {b"filenames": payload(marker)}
    crafted = py2_pickle(batch)
    pickle.loads(crafted, encoding="bytes")  # proof the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    hostile = build_archive(tmp_path / "hostile", IMAGES_PER_BATCH, SEED, replace={"data_batch_1": crafted})

    message = expect_failure(lambda: download(str(hostile.path), hostile.md5), "refusing to load", "may be malicious")

    assert named in message
    assert not marker.exists()
    assert files_under(workspace / "data") == []


def _crafted_members(kind: str, outside: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Members that, extracted naively, write into `outside` or beside the extraction directory."""

    def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes | None = b"evil\n"):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        return info, data if kind == tarfile.REGTYPE else None

    return {
        "parent path": [member("cifar-10-batches-py/../../evil.txt")],
        "absolute path": [member(str(outside / "evil.txt"))],
        # a link first, then a file written through it
        "symlink": [
            member("cifar-10-batches-py/evil-link", tarfile.SYMTYPE, linkname=str(outside)),
            member("cifar-10-batches-py/evil-link/evil.txt"),
        ],
        "hardlink": [
            member("cifar-10-batches-py/evil-hardlink", tarfile.LNKTYPE, linkname=str(outside / "secret.txt")),
            member("cifar-10-batches-py/evil-hardlink"),
        ],
        "device": [member("cifar-10-batches-py/evil-device", tarfile.CHRTYPE)],
    }[kind]


@pytest.mark.parametrize("kind", ["parent path", "absolute path", "symlink", "hardlink", "device"])
def test_archive_member_escaping_the_target_is_refused(kind, download, archive, workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    crafted_members = _crafted_members(kind, outside)
    crafted = tmp_path / "crafted.tar.gz"
    with tarfile.open(archive.path) as genuine, tarfile.open(crafted, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for member in genuine.getmembers():
            tar.addfile(member, genuine.extractfile(member) if member.isfile() else None)
        for member, data in crafted_members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)

    first = crafted_members[0][0].name
    expect_failure(lambda: download(str(crafted), md5_of(crafted)), "refusing to extract", first, "may be malicious")

    assert not list(tmp_path.rglob("evil*"))
    assert snapshot(outside) == {"secret.txt": b"secret\n"}
    assert files_under(workspace / "data") == []


# ── what the training stage sees ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong shape", "wrong dtype"])
def test_load_stored_names_the_file_and_the_fix(damage, download, archive):
    download(str(archive.path), archive.md5)
    train_file = CIFAR_DATA / "train.pt"
    train = torch.load(train_file, weights_only=True)
    if damage == "missing":
        train_file.unlink()
    elif damage == "truncated":
        train_file.write_bytes(train_file.read_bytes()[:500])
    elif damage == "wrong shape":
        torch.save({"images": train["images"][:, :, :28, :28].contiguous(), "labels": train["labels"]}, train_file)
    else:
        torch.save({"images": train["images"].float(), "labels": train["labels"]}, train_file)

    with pytest.raises(StageInputError) as caught:
        load_stored(CIFAR_DATA)

    assert str(train_file) in str(caught.value) and "run `dvc repro download@cifar10`" in str(caught.value)


# ── the stage command, as dvc repro runs it ───────────────────────────────────────────────────────


def run_stage_command(workspace: Path, url: str, md5: str) -> subprocess.CompletedProcess:
    yaml = YAML()  # round-trip: the params file keeps its comments and order
    params = yaml.load(REPO / "params.yaml")
    params["cifar10"]["download"]["url"], params["cifar10"]["download"]["md5"] = url, md5
    yaml.dump(params, workspace / "params.yaml")
    return stage(
        "download@cifar10", workspace, "--params", "params.yaml", check=False, timeout=120, PYTHONPATH=str(REPO)
    )


def test_stage_command_writes_the_dataset_and_exits_0(archive, workspace):
    result = run_stage_command(workspace, str(archive.path), archive.md5)
    assert result.returncode == 0, result.stderr
    assert files_under(workspace / CIFAR_DATA) == ["meta.json", "test.pt", "train.pt"]


def test_stage_command_failure_is_one_line_and_exit_2(server, workspace):
    url = server.url("/gone.tar.gz")
    result = run_stage_command(workspace, url, OFFICIAL_MD5)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().splitlines()[-1] == errors[0]
    assert url in errors[0] and "HTTP 404" in errors[0] and "cifar10.download.url" in errors[0]
    assert "Traceback" not in result.stderr
    assert files_under(workspace / "data") == []
