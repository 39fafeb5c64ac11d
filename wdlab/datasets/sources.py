"""Getting a dataset's files: streamed from a mirror (http(s)://, file:// or a local folder) with size caps, verified
by the md5 of their content (decompressed when the source is gzipped), and written atomically."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tqdm.auto import tqdm

from wdlab.errors import StageError
from wdlab.files import atomic_dir, atomic_path

if TYPE_CHECKING:
    from wdlab.datasets.definition import Dataset, Resource

log = logging.getLogger("wd-lab.download")

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, so a stalled mirror fails instead of hanging the pipeline
# gzip never grows incompressible data by more than a few bytes per 16 KiB block; a source far larger than its
# content is not the file it claims to be (or an endless stream)
GZIP_SLACK = 1.01


class SourceMissing(StageError):
    """The source does not hold the file (HTTP 404, no such path): the next mirror may."""


def file_md5(path: Path | str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def reason(err: BaseException) -> str:
    """The cause in a few words, on one line: 'Connection refused', not a repr with errno."""
    cause = getattr(err, "reason", None) or err
    text = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    return " ".join(str(text).split())


# ── one byte stream ───────────────────────────────────────────────────────────────────────────────


@contextlib.contextmanager
def open_source(url: str, fix: str, setting: str = "the source") -> Iterator[tuple[BinaryIO, int | None]]:
    """The byte stream behind `url` (http(s)://, file:// or a path) and its length when known. `fix` ends every
    message; `setting` names where the URL came from, for an unsupported scheme."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in {"http", "https", "file"}:
        with _urlopen(url, fix) as response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
    elif len(scheme) > 1:  # a one-letter scheme is a Windows drive (C:\...), i.e. a local path
        raise StageError(f"{setting} = {url!r} has an unsupported scheme: {fix}")
    else:
        path = Path(url).expanduser()
        try:
            handle = open(path, "rb")
        except FileNotFoundError as err:
            raise SourceMissing(f"cannot read {path} ({reason(err)}): {fix}") from None
        except OSError as err:
            raise StageError(f"cannot read {path} ({reason(err)}): {fix}") from None
        with handle:
            yield handle, path.stat().st_size


def _urlopen(url: str, fix: str) -> http.client.HTTPResponse:
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        kind = SourceMissing if err.code in (404, 410) else StageError
        raise kind(f"cannot download {url}: HTTP {err.code} {err.reason}: {fix}") from None
    except urllib.error.URLError as err:
        missing = isinstance(err.reason, FileNotFoundError)  # a file:// URL to nowhere
        raise (SourceMissing if missing else StageError)(f"cannot download {url} ({reason(err)}): {fix}") from None
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise StageError(f"cannot download {url} ({reason(err)}): {fix}") from None


def read_chunk(source: BinaryIO, url: str, received: int, fix: str) -> bytes:
    try:
        return source.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
        raise StageError(
            f"download of {url} broke off after {received:,} bytes ({reason(err)}): retry, or {fix}"
        ) from None


def download(url: str, target: Path, fix: str, setting: str = "the source", max_bytes: int | None = None) -> str:
    """Copy the source into `target` with a progress bar; return the md5 of the bytes that arrived. More than
    `max_bytes` is refused: a source that large is not the file asked for."""
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    name = Path(urllib.parse.urlsplit(url).path).name
    with open_source(url, fix, setting) as (source, size), open(target, "wb") as sink:
        if max_bytes is not None and size is not None and size > max_bytes:
            raise StageError(f"{url} holds {size:,} bytes, more than the {max_bytes:,} expected: {fix}")
        # disable=None: a bar on a terminal, silent in logs and under `dvc repro` in CI
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None) as bar:
            while chunk := read_chunk(source, url, received, fix):
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise StageError(f"{url} sends more than the {max_bytes:,} bytes expected: {fix}")
                sink.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if size is not None and received < size:
        raise StageError(f"download of {url} was cut short at {received:,} of {size:,} bytes: retry, or {fix}")
    return digest.hexdigest()


# ── a dataset's files, verified by content ────────────────────────────────────────────────────────


def fetch(
    dataset: Dataset,
    out: Path | str,
    mirrors: Sequence[str] | None = None,
    resources: Sequence[Resource] | None = None,
) -> Path:
    """Write `dataset`'s files into the folder `out`, each from the first of `mirrors` (default: the dataset's) that
    holds it with the right content; `resources` replaces the dataset's checksums (a stand-in declares its own).
    `out` appears, or replaces an earlier copy, only when every file is verified and the dataset's reader has read
    them back."""
    mirrors = tuple(mirrors or dataset.mirrors)
    resources = tuple(resources or dataset.resources)
    with atomic_dir(out) as staging:
        origins = {resource.file: _fetch_first(dataset, mirrors, resource, staging) for resource in resources}
        try:  # read back before the folder appears: content that matches its checksums may still be malformed
            dataset.check(dataset.read(staging), where=", ".join(origins.values()))
        except StageError as err:
            message = str(err)
            for file, origin in origins.items():
                message = message.replace(str(staging / file), origin)
            raise StageError(message) from None
    return Path(out)


def _fetch_first(dataset: Dataset, mirrors: Sequence[str], resource: Resource, staging: Path) -> str:
    """Copy `resource` into `staging` from the first mirror that holds it verified; return where it came from."""
    failures = []
    for mirror in mirrors:
        try:
            source = _fetch_resource(mirror, resource, staging / resource.file, dataset.install_hint)
        except StageError as err:  # missing there, unreachable or wrong: say so, try the next
            failures.append(str(err).removesuffix(f": {dataset.install_hint}"))
            continue
        log.info("%s: %s verified (md5 %s) from %s", dataset.name, resource.file, resource.md5, source)
        return source
    raise StageError(
        f"no source holds {dataset.name}'s {resource.file} with md5 {resource.md5} "
        f"(tried {'; '.join(failures)}): {dataset.install_hint}"
    )


def _fetch_resource(mirror: str, resource: Resource, target: Path, fix: str) -> str:
    """Copy `resource` from `mirror` into `target` if its content verifies; return the URL it came from. The .gz is
    tried first; only where the mirror lacks it is the raw file tried."""
    names = [f"{resource.file}.gz", resource.file] if resource.gzipped else [resource.file]
    for name in names[:-1]:
        with contextlib.suppress(SourceMissing):
            return _copy_named(mirror, name, resource, target, fix)
    return _copy_named(mirror, names[-1], resource, target, fix)


def _copy_named(mirror: str, name: str, resource: Resource, target: Path, fix: str) -> str:
    url = _join(mirror, name)
    copy_verified(url, target, resource, fix, gzipped=resource.gzipped and name.endswith(".gz"))
    return url


def copy_verified(url: str, target: Path, resource: Resource, fix: str, gzipped: bool) -> None:
    """Stream `url` (decompressed when `gzipped`) into `target`; it appears there only if its content has the
    resource's size and md5. Never holds more than the resource's size + 1 bytes: a decompression bomb stops there."""
    limit = resource.size + 1
    with atomic_path(target) as partial:
        with open_source(url, fix) as (raw, length), open(partial, "wb") as sink:
            if length is not None and length > limit * GZIP_SLACK + (1 << 16):
                raise StageError(f"{url} is {length:,} bytes, too large for {resource.file} ({resource.size:,}): {fix}")
            content = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            digest = hashlib.md5(usedforsecurity=False)
            received = 0
            try:
                while chunk := content.read(min(CHUNK_BYTES, limit - received)):
                    received += len(chunk)
                    digest.update(chunk)
                    sink.write(chunk)
                    if received >= limit:
                        raise StageError(
                            f"{url} holds more than the {resource.size:,} bytes of {resource.file} "
                            f"(a decompression bomb, or another file): {fix}"
                        )
            except (gzip.BadGzipFile, EOFError, zlib.error) as err:
                raise StageError(f"{url} is not a readable .gz ({reason(err)}): {fix}") from None
            except (OSError, http.client.HTTPException) as err:
                raise StageError(
                    f"download of {url} broke off after {received:,} bytes ({reason(err)}): {fix}"
                ) from None
        actual = digest.hexdigest()
        if received != resource.size or actual != resource.md5:
            raise StageError(
                f"{url} holds {received:,} bytes with md5 {actual}, not {resource.file}'s {resource.size:,} with md5 "
                f"{resource.md5}: {fix}"
            )


def _join(mirror: str, name: str) -> str:
    """`name` inside a mirror: a URL base or a local folder."""
    if urllib.parse.urlsplit(mirror).scheme.lower() in {"http", "https", "file"}:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(name)
    return str(Path(mirror).expanduser() / name)
