"""Fetch an image study's dataset (--study), verify it and save it as uint8 tensors (train.pt, test.pt and meta.json
in --out, wdlab/datasets/store.py).

CIFAR-10 comes from `cifar10.download.url` (https://, http://, file:// or a local path, so a mirror or a copy works
behind a firewall), checked against `cifar10.download.md5`; the verified archive is kept in --cache and is not
downloaded again. Any other registered dataset comes from its definition's sources (Fashion-MNIST: Debian's installed
copy, then the official URLs) or from `<study>.download.url`, each file verified by the checksum of its content; the
verified files are kept in --cache too.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wdlab import stage
from wdlab.cifar10 import archive as cifar_archive
from wdlab.datasets import sources, store
from wdlab.datasets.definition import Dataset, ImageSet
from wdlab.datasets.registry import get
from wdlab.errors import StageError
from wdlab.files import atomic_dir, project_root
from wdlab.settings import ImageStudy, Settings

log = logging.getLogger("wd-lab.download")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study = settings.study(args.study)
    dataset = get(study.dataset)
    # In the project root, not the stage's working copy: a `dvc exp run --queue` temp copy reuses it too.
    cache = project_root() / args.cache
    data, source = cifar10(study, cache) if dataset.name == "cifar10" else registered(study, dataset, cache)
    with atomic_dir(args.out) as staging:  # an earlier dataset stays until this one is complete
        store.save_images(data, staging, dataset.name, source)
    log.info(
        "wrote %s: %s, %d train and %d test images of %s",
        args.out,
        dataset.title,
        len(data.train_labels),
        len(data.test_labels),
        ", ".join(data.classes),
    )


def cifar10(study: ImageStudy, cache: Path) -> tuple[ImageSet, dict]:
    """The archive of `study.download`, from the cache when one with its md5 is there, read as tensors."""
    source = study.download
    md5 = cifar_archive.normalised_md5(source.md5 or "")
    archive = cifar_archive.cached_archive_path(cache, md5)
    if cifar_archive.is_verified(archive, md5):
        log.info("using %s (md5 verified), not downloading again", archive)
    else:
        log.info("downloading %s", source.url)
        cifar_archive.fetch(source.url, archive, md5)
    return unpack(archive, md5), {"source_md5": md5, "official": md5 == cifar_archive.OFFICIAL_MD5}


def registered(study: ImageStudy, dataset: Dataset, cache: Path) -> tuple[ImageSet, dict]:
    """The definition's files, each verified by its content's md5, from `study.download.url` or the definition's
    own sources; a cached copy whose every file still verifies is read without fetching again."""
    folder = cache / dataset.name
    if all(verified(folder / resource.file, resource.md5) for resource in dataset.resources):
        log.info("using %s (every file's md5 verified), not fetching again", folder)
    else:
        sources.fetch(dataset, folder, [study.download.url] if study.download.url else None)
    files = {resource.file: resource.md5 for resource in dataset.resources}
    return dataset.check(dataset.read(folder), where=str(folder)), {"files": files, "official": True}


def verified(path: Path, md5: str) -> bool:
    return path.is_file() and sources.file_md5(path) == md5


def unpack(archive: Path, md5: str) -> cifar_archive.Cifar10:
    """Read the archive as tensors. One that fails is deleted: the fix changes the md5 that names it in the cache."""
    try:
        return cifar_archive.read_archive(archive, name=f"the archive with md5 {md5}")
    except StageError:
        archive.unlink(missing_ok=True)
        raise


def parser() -> argparse.ArgumentParser:
    return stage.add_study(
        stage.parser_with_paths(
            __doc__,
            "python -m stages.download",
            {
                "cache": "where verified archives and files are kept, relative to the project root",
                "out": "the dataset as tensors (output folder)",
            },
        )
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
