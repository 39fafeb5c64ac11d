"""Download CIFAR-10, verify its md5 and save it as uint8 tensors: data/cifar10/{train,test}.pt and meta.json.

`cifar10.download.url` may be https://, http://, file:// or a local path, so a mirror or a copy works
behind a firewall. The verified archive is kept in data/downloads/ and is not downloaded again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stages import cifar_archive, paths
from stages.cifar_archive import Cifar10
from stages.common import StageError, project_root, run_stage, stage_parser
from stages.files import atomic_dir
from stages.settings import Settings

log = logging.getLogger("wd-lab.download")


def main(settings: Settings, args: argparse.Namespace) -> None:
    source = settings.cifar10.download
    md5 = cifar_archive.normalised_md5(source.md5)
    # In the project root, not the stage's working copy: a `dvc exp run --queue` temp copy reuses it too.
    archive = cifar_archive.cached_archive_path(project_root() / paths.CIFAR_ARCHIVE_CACHE, md5)
    if cifar_archive.is_verified(archive, md5):
        log.info("using %s (md5 verified), not downloading again", archive)
    else:
        log.info("downloading %s", source.url)
        cifar_archive.fetch(source.url, archive, md5)
    dataset = unpack(archive, md5)
    with atomic_dir(paths.CIFAR_DATA) as staging:  # an earlier data/cifar10 stays until this one is complete
        cifar_archive.save_cifar10(dataset, staging, md5)
    log.info(
        "wrote %s: %d train and %d test images of %s",
        paths.CIFAR_DATA, len(dataset.train_labels), len(dataset.test_labels), ", ".join(dataset.classes),
    )


def unpack(archive: Path, md5: str) -> Cifar10:
    """Read the archive as tensors. One that fails is deleted: the fix changes the md5 that names it in the cache."""
    try:
        return cifar_archive.read_archive(archive, name=f"the archive with md5 {md5}")
    except StageError:
        archive.unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__, "python -m stages.download"))
