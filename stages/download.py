"""Download CIFAR-10, verify its md5 and save it as uint8 tensors (train.pt, test.pt and meta.json in --out).

`cifar10.download.url` may be https://, http://, file:// or a local path, so a mirror or a copy works
behind a firewall. The verified archive is kept in --cache and is not downloaded again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wdlab import stage
from wdlab.cifar10 import archive as cifar_archive
from wdlab.errors import StageError
from wdlab.files import atomic_dir, project_root
from wdlab.settings import Settings

log = logging.getLogger("wd-lab.download")


def main(settings: Settings, args: argparse.Namespace) -> None:
    source = settings.cifar10.download
    md5 = cifar_archive.normalised_md5(source.md5)
    # In the project root, not the stage's working copy: a `dvc exp run --queue` temp copy reuses it too.
    archive = cifar_archive.cached_archive_path(project_root() / args.cache, md5)
    if cifar_archive.is_verified(archive, md5):
        log.info("using %s (md5 verified), not downloading again", archive)
    else:
        log.info("downloading %s", source.url)
        cifar_archive.fetch(source.url, archive, md5)
    dataset = unpack(archive, md5)
    with atomic_dir(args.out) as staging:  # an earlier dataset stays until this one is complete
        cifar_archive.save_cifar10(dataset, staging, md5)
    log.info(
        "wrote %s: %d train and %d test images of %s",
        args.out,
        len(dataset.train_labels),
        len(dataset.test_labels),
        ", ".join(dataset.classes),
    )


def unpack(archive: Path, md5: str) -> cifar_archive.Cifar10:
    """Read the archive as tensors. One that fails is deleted: the fix changes the md5 that names it in the cache."""
    try:
        return cifar_archive.read_archive(archive, name=f"the archive with md5 {md5}")
    except StageError:
        archive.unlink(missing_ok=True)
        raise


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(
        __doc__,
        "python -m stages.download",
        {
            "cache": "where verified archives are kept, relative to the project root",
            "out": "the dataset as tensors (output folder)",
        },
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
