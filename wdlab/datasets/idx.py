"""The idx format of MNIST and Fashion-MNIST: a big-endian header (magic 0x0000 08 D: unsigned bytes in D
dimensions, then D sizes as int32) followed by the values, row-major. Read gzipped or raw, never past the size the
header declares, and written back for stand-ins."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from wdlab.errors import StageError

UBYTE = 0x08  # the type code of unsigned bytes, the only one the datasets use
GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 128 << 20  # a header declaring more is refused before anything is decompressed


def read_idx(path: Path, dims: int, fix: str, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """The uint8 array of `dims` dimensions in the idx file `path` (gzipped or raw), checked against its header."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as stream:
            return _read(stream, path, dims, fix, max_bytes)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise StageError(f"{path} is not a readable .gz ({type(err).__name__}: {err}): {fix}") from None
    except OSError as err:
        raise StageError(f"cannot read {path} ({err.strerror or err}): {fix}") from None


def _read(stream, path: Path, dims: int, fix: str, max_bytes: int) -> np.ndarray:
    header = stream.read(4 + 4 * dims)
    expected = struct.pack(">HBB", 0, UBYTE, dims)
    if header[:4] != expected:
        raise StageError(
            f"{path} starts with {header[:4].hex() or 'nothing'}, not the idx magic {expected.hex()} of "
            f"{dims}-dimensional unsigned bytes: it is not this file of the dataset; {fix}"
        )
    if len(header) < len(expected) + 4 * dims:
        raise StageError(f"{path} ends inside its idx header: it is truncated; {fix}")
    shape = struct.unpack(f">{dims}I", header[4:])
    size = int(np.prod(shape, dtype=np.int64))
    if size > max_bytes:
        raise StageError(
            f"{path} declares {size:,} bytes of data, more than the {max_bytes:,} allowed (a decompression bomb, or "
            f"not this dataset): {fix}"
        )
    body = stream.read(size + 1)  # one byte more than declared tells an oversized file, without reading it all
    if len(body) < size:
        raise StageError(
            f"{path} holds {len(body):,} of the {size:,} bytes its header declares: it is truncated; {fix}"
        )
    if len(body) > size:
        raise StageError(f"{path} holds more than the {size:,} bytes its header declares: it is not an idx file; {fix}")
    return np.frombuffer(bytearray(body), dtype=np.uint8).reshape(shape)  # a writable copy, as torch wants


def idx_bytes(values: np.ndarray) -> bytes:
    """`values` (uint8, any number of dimensions) in the idx format."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    return struct.pack(f">HBB{values.ndim}I", 0, UBYTE, values.ndim, *values.shape) + values.tobytes()


def write_gzipped(path: Path, content: bytes) -> None:
    """`content` gzipped into `path`, the same bytes for the same content (no name or time in the header)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(content)
