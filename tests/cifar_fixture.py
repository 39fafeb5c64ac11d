"""A tiny CIFAR-10 archive in the exact official python format, with images a small CNN can learn.

    archive = build_archive(tmp_path)                      # 50 images per batch: 250 train, 50 test
    settings.cifar10.download → url=str(archive.path), md5=archive.md5

Each class has its own colour and stripe pattern, plus pixel noise, so a small CNN trained on the
250 training images scores well above chance (10 %) on the test batch. The same images_per_batch
and seed always give the same bytes, hence the same md5.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_BATCH = "batches.meta"
README = "readme.html"
ARCHIVE_NAME = "cifar-10-python.tar.gz"

# One RGB colour per class, far apart, so the class is visible in the mean colour alone.
_CLASS_COLOURS = np.array(
    [[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [200, 60, 200],
     [60, 200, 200], [230, 140, 40], [128, 128, 128], [40, 40, 40], [230, 230, 230]],
    dtype=np.float64,
)
_MTIME = 1_244_000_000  # fixed, so the archive's bytes (and md5) depend only on the arguments


class FixtureArchive(NamedTuple):
    path: Path  # the .tar.gz
    md5: str  # its md5, the value for cifar10.download.md5


def build_archive(
    directory: Path | str,
    images_per_batch: int = 50,
    seed: int = 0,
    *,
    omit: Iterable[str] = (),
    replace: Mapping[str, bytes] | None = None,
) -> FixtureArchive:
    """Write `directory`/cifar-10-python.tar.gz: five training batches and a test batch of
    `images_per_batch` images each, batches.meta and readme.html.

    omit: member names to leave out (e.g. "data_batch_3"); replace: member name → raw bytes written
    instead of the pickle (e.g. a crafted pickle). Both name members without the directory prefix.
    """
    members = {name: py2_pickle(content) for name, content in make_batches(images_per_batch, seed).items()}
    members[README] = b"<html><body>CIFAR-10 test fixture</body></html>\n"
    members.update(replace or {})
    for name in omit:
        members.pop(name)
    return write_archive(Path(directory) / ARCHIVE_NAME, {f"{BATCH_DIR}/{name}": data for name, data in members.items()})


def make_batches(images_per_batch: int = 50, seed: int = 0) -> dict[str, dict[bytes, Any]]:
    """What each batch file holds, by member name, as Python 2 pickled it and `encoding="bytes"` reads it.

    data_batch_1..5 and test_batch: {b"batch_label", b"labels": [int], b"data": uint8 [N, 3072] (the red,
    green and blue 32×32 planes, row-major), b"filenames": [bytes]}; batches.meta: {b"label_names", ...}.
    """
    rng = np.random.default_rng(seed)
    batches = {}
    for name, label in [(b, f"training batch {i} of 5") for i, b in enumerate(TRAIN_BATCHES, 1)] + [(TEST_BATCH, "testing batch 1 of 1")]:
        labels = rng.permutation(np.arange(images_per_batch) % len(CLASSES))  # every class in every batch
        batches[name] = {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": class_images(labels, rng),
            b"filenames": [f"{CLASSES[v]}_{name}_{i}.png".encode() for i, v in enumerate(labels)],
        }
    batches[META_BATCH] = {
        b"num_cases_per_batch": images_per_batch,
        b"label_names": [c.encode() for c in CLASSES],
        b"num_vis": 3072,
    }
    return batches


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 3072]: the class colour, plus stripes whose direction and frequency tell the class, plus noise."""
    labels = np.asarray(labels)
    coords = np.arange(32) / 32
    frequency = (labels // 2 + 1)[:, None, None]  # 1–5 periods across the image
    horizontal = (labels % 2 == 0)[:, None, None]
    along = np.where(horizontal, coords[None, :, None], coords[None, None, :])  # [N, 32, 32]
    stripes = 40 * np.sin(2 * np.pi * frequency * along)
    images = _CLASS_COLOURS[labels][:, :, None, None] + stripes[:, None] + rng.normal(0, 25, (len(labels), 3, 32, 32))
    return np.clip(images, 0, 255).round().astype(np.uint8).reshape(len(labels), 3072)


def py2_pickle(obj: Any) -> bytes:
    """Protocol-2 pickle bytes as Python 2 and numpy 1 wrote the official files (str as BINSTRING)."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_archive(path: Path | str, members: Mapping[str, bytes]) -> FixtureArchive:
    """A reproducible .tar.gz of regular files (name → bytes) with their parent directories first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for directory in sorted({name.rsplit("/", 1)[0] for name in members if "/" in name}):
                tar.addfile(_info(directory, tarfile.DIRTYPE, 0o755))
            for name, data in members.items():
                tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return FixtureArchive(path, hashlib.md5(path.read_bytes()).hexdigest())


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, _MTIME
    return info


class _Py2Pickler(pickle._Pickler):
    """Python 3 pickles bytes at protocol 2 through `_codecs.encode`; Python 2 wrote them as BINSTRING,
    and numpy 1 named `numpy.core.multiarray._reconstruct`. This writes what the official files contain."""

    dispatch = dict(pickle._Pickler.dispatch)
    _reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]

    def save_binstring(self, obj: bytes | str) -> None:
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_binstring
    dispatch[str] = save_binstring

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is self._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test and CI output quiet
        pass


@contextlib.contextmanager
def served(archive: FixtureArchive) -> Iterator[str]:
    """Serve the archive over real HTTP from 127.0.0.1 on a free port; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(archive.path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{archive.path.name}"
    finally:
        server.shutdown()
        server.server_close()
