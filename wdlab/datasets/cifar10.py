"""CIFAR-10: 50,000 + 10,000 colour 32×32 images of 10 classes in the official python archive, read by
wdlab/cifar10/archive.py (safe extraction, plain-data unpickling) and stood in for by wdlab/cifar10/standin.py."""

from __future__ import annotations

from pathlib import Path

from wdlab.cifar10 import archive, standin
from wdlab.datasets.definition import Dataset, ImageSet, Resource, StandIn
from wdlab.datasets.sources import file_md5

# The archive is read as it is: its md5 is that of the .tar.gz itself, which nobody recompresses.
ARCHIVE = Resource(standin.ARCHIVE_NAME, archive.OFFICIAL_MD5, 170_498_071, gzipped=False)
MEAN = (0.4914, 0.4822, 0.4465)  # per channel over the training set, pixels in [0, 1]
STD = (0.2470, 0.2435, 0.2616)
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def read(folder: Path) -> ImageSet:
    """The archive in `folder` as uint8 images [N, 3, 32, 32] and int64 labels."""
    return archive.read_archive(Path(folder) / ARCHIVE.file)


def build_standin(
    directory: Path | str, images_per_batch: int = 50, seed: int = 0, difficulty: standin.Difficulty = "easy"
) -> StandIn:
    """A stand-in archive in the official format (wdlab/cifar10/standin.py) and its own checksum."""
    built = standin.build_archive(directory, images_per_batch, seed, difficulty=difficulty)
    return StandIn(built.path.parent, (ARCHIVE._replace(md5=file_md5(built.path), size=built.path.stat().st_size),))


CIFAR10 = Dataset(
    name="cifar10",
    title="CIFAR-10",
    classes=standin.CLASSES,
    channels=3,
    side=32,
    mean=MEAN,
    std=STD,
    resources=(ARCHIVE,),
    mirrors=MIRRORS,
    read=read,
    build_standin=build_standin,
    install_hint=f"give a folder or URL holding {ARCHIVE.file} (`--source`)",
)
