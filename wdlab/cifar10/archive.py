"""The CIFAR-10 python archive: md5-checked download, safe extraction, plain-data unpickling, uint8 tensors."""

from __future__ import annotations

import gzip
import logging
import pickle
import posixpath
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from wdlab.datasets import sources, store
from wdlab.datasets.definition import ImageSet
from wdlab.datasets.sources import CHUNK_BYTES, file_md5, reason
from wdlab.errors import StageError
from wdlab.files import atomic_path

log = logging.getLogger("wd-lab.download")

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_BATCH = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)  # a row of b"data" holds the red, green and blue 32×32 planes, each row-major
N_CLASSES = 10

URL_PARAM, MD5_PARAM = "cifar10.download.url", "cifar10.download.md5"
USE_ANOTHER_SOURCE = f"set `{URL_PARAM}` to a mirror, a file:// URL or a local path"
USE_OFFICIAL_ARCHIVE = f"point `{URL_PARAM}` and `{MD5_PARAM}` at the official cifar-10-python.tar.gz"


OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the official cifar-10-python.tar.gz

Cifar10 = ImageSet  # (train_images, train_labels, test_images, test_labels, classes), images [N, 3, 32, 32]


# ── download ──────────────────────────────────────────────────────────────────────────────────────


def normalised_md5(md5: str) -> str:
    """The md5 param in lower case; a value that is not 32 hex digits is a params mistake."""
    digest = md5.strip().lower()
    if len(digest) != 32 or not all(c in "0123456789abcdef" for c in digest):
        raise StageError(f"{MD5_PARAM} = {md5!r} is not an md5 (32 hex digits): set it to the archive's md5")
    return digest


def cached_archive_path(cache_dir: Path | str, md5: str) -> Path:
    """Named by content, so a mirror or local copy with the same md5 reuses the cached download."""
    return Path(cache_dir) / f"cifar-10-python-{md5}.tar.gz"


def is_verified(archive: Path, md5: str) -> bool:
    if not archive.is_file():
        return False
    actual = file_md5(archive)
    if actual != md5:
        log.warning("%s has md5 %s, not %s: downloading it again", archive, actual, md5)
    return actual == md5


def fetch(url: str, destination: Path, md5: str) -> None:
    """Stream `url` (http(s)://, file:// or a path) to `destination`; it appears there only if its md5 matches."""
    with atomic_path(destination) as partial:  # removed on any failure, so the cache holds verified files only
        actual = sources.download(url, partial, USE_ANOTHER_SOURCE, URL_PARAM)
        if actual != md5:
            raise StageError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; deleted the download: "
                f"check `{URL_PARAM}` or fix `{MD5_PARAM}`"
            )


# ── extraction ────────────────────────────────────────────────────────────────────────────────────


def read_archive(archive: Path, name: str | None = None) -> Cifar10:
    """Extract the batches into a scratch directory beside `archive` and read them as tensors.

    `name` is how error messages call the archive (default: its path).
    """
    with tempfile.TemporaryDirectory(prefix=".extract.", suffix=".tmp", dir=archive.parent) as scratch:
        return read_batches(extract_batches(archive, Path(scratch), name))


def extract_batches(archive: Path, target: Path, name: str | None = None) -> Path:
    """Extract only the six batches and batches.meta into `target`; return the batch directory."""
    name = name or str(archive)
    wanted = {f"{BATCH_DIR}/{batch}" for batch in (*TRAIN_BATCHES, TEST_BATCH, META_BATCH)}
    try:
        _check_gzip(archive)
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _refuse_unsafe(member, name)
            needed = [m for m in members if posixpath.normpath(m.name) in wanted]
            missing = sorted(wanted - {posixpath.normpath(m.name) for m in needed})
            if missing:
                raise StageError(
                    f"{name} lacks {', '.join(missing)}: it is not CIFAR-10 in python format; {USE_OFFICIAL_ARCHIVE}"
                )
            tar.extractall(target, members=needed, filter="data")  # the filter is a second guard behind _refuse_unsafe
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise StageError(f"{name} is not a readable .tar.gz ({reason(err)}): {USE_OFFICIAL_ARCHIVE}") from None
    except OSError as err:  # the disk, not the archive: full, read-only, ...
        raise StageError(f"cannot extract {name} into {target} ({reason(err)}): check the free space there") from None
    return target / BATCH_DIR


def _check_gzip(archive: Path) -> None:
    """Decompress the whole file once: tarfile stops at the end-of-archive marker and never checks the CRC."""
    with gzip.open(archive, "rb") as stream:
        while stream.read(CHUNK_BYTES):
            pass


def _refuse_unsafe(member: tarfile.TarInfo, archive_name: str) -> None:
    """Refuse the whole archive if any member could write outside the target directory."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        problem = "escapes the target directory"
    elif not (member.isfile() or member.isdir()):
        problem = "is a link or device, not a plain file"
    else:
        return
    raise StageError(
        f"refusing to extract {member.name!r} from {archive_name}: it {problem}, the archive may be malicious; "
        f"{USE_OFFICIAL_ARCHIVE}"
    )


# ── batches → tensors ─────────────────────────────────────────────────────────────────────────────

# numpy 1 and 2 keep the array-rebuilding function in differently named modules; take it from numpy itself.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]

# Every global the official batches name (Python 2 pickles of dicts, lists, ints, str and uint8 arrays).
_PLAIN_DATA_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # as numpy 1 wrote it, in the official files
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # as numpy 2 writes it
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NotPlainData(pickle.UnpicklingError):
    """A pickle asked for a class or function outside the plain-data allowlist."""


class PlainDataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, numbers, strings and numpy arrays; refuses any other class or function."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PLAIN_DATA_GLOBALS[module, name]
        except KeyError:
            raise NotPlainData(f"{module}.{name}") from None


def load_plain_pickle(path: Path) -> Any:
    """Unpickle a batch file the way the format needs (bytes keys), refusing anything but plain data."""
    member = f"{BATCH_DIR}/{path.name}"
    with open(path, "rb") as handle:
        try:
            return PlainDataUnpickler(handle, encoding="bytes").load()
        except NotPlainData as err:
            raise StageError(
                f"refusing to load {err} from {member} (not plain data): the archive may be malicious; "
                f"{USE_OFFICIAL_ARCHIVE}"
            ) from None
        except Exception as err:  # a damaged pickle raises many kinds (EOFError, KeyError, ValueError, ...)
            raise StageError(
                f"{member} is not a readable pickle ({type(err).__name__}: {reason(err)}): {USE_OFFICIAL_ARCHIVE}"
            ) from None


def read_batches(batch_dir: Path) -> Cifar10:
    """The five training batches, the test batch and the class names, checked and as tensors."""
    train_images, train_labels = _to_tensors([_read_batch(batch_dir / name) for name in TRAIN_BATCHES])
    test_images, test_labels = _to_tensors([_read_batch(batch_dir / TEST_BATCH)])
    classes = _class_names(load_plain_pickle(batch_dir / META_BATCH))
    return Cifar10(train_images, train_labels, test_images, test_labels, classes)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_plain_pickle(path)

    def not_cifar(problem: str) -> StageError:
        return StageError(
            f"{BATCH_DIR}/{path.name} {problem}: it is not CIFAR-10 in python format; {USE_OFFICIAL_ARCHIVE}"
        )

    if not (isinstance(batch, dict) and b"data" in batch and b"labels" in batch):
        raise not_cifar("is not a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], _label_array(batch[b"labels"])
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
        and len(data)
    ):
        raise not_cifar(f"holds data {_describe(data)}, expected uint8 [N, 3072]")
    if labels is None or labels.shape != (len(data),):
        raise not_cifar(
            f"holds labels {_describe(batch[b'labels'])} for {len(data)} images, expected {len(data)} integers"
        )
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise not_cifar(f"has labels from {labels.min()} to {labels.max()}, expected 0 to {N_CLASSES - 1}")
    return data, labels


def _label_array(value: Any) -> np.ndarray | None:
    """The labels as an integer array, or None when they are not integers (ragged, text, objects)."""
    try:
        labels = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return labels if labels.dtype.kind in "iu" else None


def _to_tensors(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack batches into uint8 images [N, 3, 32, 32] and int64 labels [N]; one copy, no per-image Python."""
    data = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches]).astype(np.int64)
    return torch.from_numpy(data).reshape(-1, *IMAGE_SHAPE), torch.from_numpy(labels)


def _class_names(meta: Any) -> tuple[str, ...]:
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == N_CLASSES and all(isinstance(n, (bytes, str)) for n in names)):
        raise StageError(f"{BATCH_DIR}/{META_BATCH} lacks {N_CLASSES} b'label_names': {USE_OFFICIAL_ARCHIVE}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
    if isinstance(value, list):
        return f"list of {len(value)}"
    return type(value).__name__


# ── the stage's output, and reading it back ───────────────────────────────────────────────────────


def save_cifar10(dataset: Cifar10, directory: Path | str, source_md5: str) -> None:
    """Write train.pt, test.pt and meta.json (wdlab/datasets/store.py), naming the archive by its md5 (read them
    back with wdlab.datasets.registry.load_stored)."""
    store.save_images(dataset, directory, "cifar10", {"source_md5": source_md5, "official": source_md5 == OFFICIAL_MD5})
