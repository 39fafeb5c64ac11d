"""A small CIFAR-10 stand-in archive in the official python format, for trying the pipeline offline.

    archive = build_archive(directory)                     # 50 images per batch: 250 train, 50 test
    params.yaml: cifar10.download.url = str(archive.path) (or served(archive)'s URL), md5 = archive.md5

Two kinds of images (`difficulty`):

- "easy" (the default, for plumbing checks): each class has its own colour and stripe pattern, plus
  pixel noise. A small CNN separates the classes within an epoch or two, reaching ~100 %.
- "ci" (the CI profile's stand-in): images that behave like CIFAR-10 in the small-data regime. Each
  class is two textured objects (a smooth random silhouette, a class colour shared with a
  look-alike "sibling" class, and a striped texture whose orientation and frequency belong to the
  class) pasted at a random size, position and mirror image, with colour jitter, onto a busy random
  background, often beside a small clutter object of another class, under heavy pixel noise; 30 % of
  images show the sibling's object (cat/dog, automobile/truck, ...), so the classes overlap. With the
  CI profile (width 8, 500 training images, 15 epochs, a 600-image test batch via `test_images`) test
  accuracy lands near 58 % while λ = 0 fits over 90 % of the training images, the test accuracy moves
  by 1–1.5 points (std) between training seeds, and labels shuffled against the images give chance.

The same arguments always give the same bytes, hence the same md5.
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
from typing import Any, Literal, NamedTuple

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
    [
        [200, 60, 60],
        [60, 200, 60],
        [60, 60, 200],
        [200, 200, 60],
        [200, 60, 200],
        [60, 200, 200],
        [230, 140, 40],
        [128, 128, 128],
        [40, 40, 40],
        [230, 230, 230],
    ],
    dtype=np.float64,
)
_MTIME = 1_244_000_000  # fixed, so the archive's bytes (and md5) depend only on the arguments

Difficulty = Literal["easy", "ci"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "ci")


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
    difficulty: Difficulty = "easy",
    test_images: int | None = None,
) -> FixtureArchive:
    """Write `directory`/cifar-10-python.tar.gz: five training batches of `images_per_batch` images,
    a test batch of `test_images` (default: `images_per_batch`), batches.meta and readme.html.

    omit: member names to leave out (e.g. "data_batch_3"); replace: member name → raw bytes written
    instead of the pickle (e.g. a crafted pickle). Both name members without the directory prefix.
    difficulty: "easy" (separable at a glance) or "ci" (behaves like CIFAR-10); see the module docstring.
    """
    batches = make_batches(images_per_batch, seed, difficulty=difficulty, test_images=test_images)
    members = {name: py2_pickle(content) for name, content in batches.items()}
    # these bytes are part of every archive's md5 (and of the md5s recorded for it): keep them as they are
    members[README] = b"<html><body>CIFAR-10 test fixture</body></html>\n"
    members.update(replace or {})
    for name in omit:
        members.pop(name)
    return write_archive(
        Path(directory) / ARCHIVE_NAME, {f"{BATCH_DIR}/{name}": data for name, data in members.items()}
    )


def make_batches(
    images_per_batch: int = 50, seed: int = 0, *, difficulty: Difficulty = "easy", test_images: int | None = None
) -> dict[str, dict[bytes, Any]]:
    """What each batch file holds, by member name, as Python 2 pickled it and `encoding="bytes"` reads it.

    data_batch_1..5 and test_batch: {b"batch_label", b"labels": [int], b"data": uint8 [N, 3072] (the red,
    green and blue 32×32 planes, row-major), b"filenames": [bytes]}; batches.meta: {b"label_names", ...}.
    The training batches hold `images_per_batch` images each, the test batch `test_images` (default the same).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {difficulty!r}")
    rng = np.random.default_rng(seed)
    if difficulty == "ci":
        world = StandInWorld.draw(np.random.default_rng([seed, 1]))  # its own stream: the batches' draws stay put
        draw_images = functools.partial(standin_images, world=world)
    else:
        draw_images = class_images
    sizes = {name: images_per_batch for name in TRAIN_BATCHES} | {
        TEST_BATCH: images_per_batch if test_images is None else test_images
    }
    batches = {}
    for name, label in [(b, f"training batch {i} of 5") for i, b in enumerate(TRAIN_BATCHES, 1)] + [
        (TEST_BATCH, "testing batch 1 of 1")
    ]:
        labels = rng.permutation(np.arange(sizes[name]) % len(CLASSES))  # every class in every batch
        batches[name] = {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": draw_images(labels, rng),
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


# ── the "ci" stand-in: images that behave like CIFAR-10 for a small CNN ───────────────────────────

# Look-alike pairs: siblings share a palette, and a fraction of each class's images show the sibling's object.
SIBLINGS = ((0, 8), (1, 9), (2, 6), (3, 5), (4, 7))  # airplane/ship, automobile/truck, bird/frog, cat/dog, deer/horse
_SIBLING_OF = {a: b for pair in SIBLINGS for a, b in (pair, pair[::-1])}
_PROTOTYPES = 2  # objects per class
_OBJECT_SIZES = (24, 28, 32)  # side of the object's square, pixels; one drawn per image
_CLUTTER_SIZE = 14  # side of the small object of another class behind the main one
_OVERLAP = 0.3  # fraction of images that show the sibling class's object: the classes overlap
_CLUTTER = 0.4  # fraction of images with a clutter object
_NOISE = 25.0  # pixel noise std (of 255)


class StandInWorld(NamedTuple):
    """Every class's objects, rendered once: objects[class][prototype][size] = (rgb [3, S, S], opacity [S, S]),
    the sizes being _OBJECT_SIZES then _CLUTTER_SIZE."""

    objects: list[list[list[tuple[np.ndarray, np.ndarray]]]]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> StandInWorld:
        palettes = rng.uniform(50, 205, (len(SIBLINGS), 3))  # one base colour per sibling pair
        palette_of = {c: i for i, pair in enumerate(SIBLINGS) for c in pair}
        angles = rng.permutation(len(CLASSES)) * np.pi / len(CLASSES)  # stripe orientation of each class
        periods = rng.uniform(2.0, 5.0, len(CLASSES))  # stripes across 32 pixels
        objects = []
        for c in range(len(CLASSES)):
            prototypes = []
            for _ in range(_PROTOTYPES):
                silhouette = rng.normal(0, 1, (4, 4))  # low-resolution fields, smoothly upsampled at each size
                texture = rng.normal(0, 1, (3, 4, 4))
                colour = palettes[palette_of[c]] + rng.normal(0, 25, 3)
                tilt, stretch = rng.normal(0, 0.15, 2)  # the prototype's stripes vary around the class's
                phase = rng.uniform(0, 2 * np.pi)
                stripe_colour = rng.uniform(0.3, 1.0, 3)
                rendered = []
                for size in (*_OBJECT_SIZES, _CLUTTER_SIZE):
                    r = np.linspace(-1, 1, size)
                    opacity = 1 / (
                        1 + np.exp(-4 * (_smooth(silhouette, size) + 1.5 - 2.5 * (r[:, None] ** 2 + r[None, :] ** 2)))
                    )
                    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
                    angle, frequency = angles[c] + tilt, periods[c] * (1 + stretch) / 32
                    stripes = np.sin(2 * np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y) + phase)
                    rgb = (
                        colour[:, None, None]
                        + 45 * _smooth(texture, size)
                        + 90 * stripes * stripe_colour[:, None, None]
                    )
                    rendered.append((rgb, opacity))
                prototypes.append(rendered)
            objects.append(prototypes)
        return cls(objects)


def standin_images(labels: np.ndarray, rng: np.random.Generator, world: StandInWorld) -> np.ndarray:
    """uint8 [N, 3072]: per image a busy background, maybe a small clutter object of another class, the
    object of its class (of its sibling class for _OVERLAP of them) at a random size, place and mirroring
    with colour jitter, and pixel noise."""
    n = len(labels)
    images = (
        rng.uniform(60, 190, (n, 1, 1, 1))  # brightness
        + rng.normal(0, 30, (n, 3, 1, 1))  # tint
        + 45 * _smooth(rng.normal(0, 1, (n, 3, 4, 4)), 32)  # coloured blotches
        + 22.5 * _smooth(rng.normal(0, 1, (n, 1, 8, 8)), 32)  # finer grey ones
    )
    for image, label in zip(images, labels):
        if rng.random() < _CLUTTER:
            other = (label + rng.integers(1, len(CLASSES))) % len(CLASSES)
            rgb, opacity = world.objects[other][rng.integers(_PROTOTYPES)][-1]
            _paste(image, rgb, opacity, rng)
        shown = _SIBLING_OF[int(label)] if rng.random() < _OVERLAP else label
        rgb, opacity = world.objects[shown][rng.integers(_PROTOTYPES)][rng.integers(len(_OBJECT_SIZES))]
        gain = 1 + rng.uniform(-0.25, 0.25, (3, 1, 1))
        _paste(image, rgb * gain + rng.normal(0, 25), opacity, rng)
    images += rng.normal(0, _NOISE, images.shape)
    return np.clip(images, 0, 255).round().astype(np.uint8).reshape(n, 3072)


def _paste(image: np.ndarray, rgb: np.ndarray, opacity: np.ndarray, rng: np.random.Generator) -> None:
    """Blend the object into `image` [3, 32, 32] in place at a random position, mirrored half the time."""
    size = opacity.shape[0]
    top, left, mirror = rng.integers(0, 33 - size), rng.integers(0, 33 - size), rng.random() < 0.5
    if mirror:
        rgb, opacity = rgb[:, :, ::-1], opacity[:, ::-1]
    region = image[:, top : top + size, left : left + size]
    region *= 1 - opacity
    region += opacity * rgb


def _smooth(low: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of the last two axes (k × k → size × size, corners aligned)."""
    k = low.shape[-1]
    position = np.linspace(0, k - 1, size)
    below = np.minimum(np.floor(position).astype(int), k - 2)
    weights = np.zeros((size, k))
    weights[np.arange(size), below] = 1 - (position - below)
    weights[np.arange(size), below + 1] = position - below
    return np.einsum("ij,...jk,lk->...il", weights, low, weights)


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
    def log_message(self, format: str, *args: Any) -> None:  # keep test, CI and benchmark output quiet
        pass


@contextlib.contextmanager
def served(archive: FixtureArchive) -> Iterator[str]:
    """Serve the archive over real HTTP from 127.0.0.1 on a free port; yields its URL."""
    with served_directory(archive.path.parent) as base:
        yield f"{base}/{archive.path.name}"


@contextlib.contextmanager
def served_directory(directory: Path | str) -> Iterator[str]:
    """Serve the files of `directory` over real HTTP from 127.0.0.1 on a free port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
