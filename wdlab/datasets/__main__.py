"""Fetch a registered dataset into a folder, verified, or list the datasets:

    python -m wdlab.datasets fetch fashion-mnist --out data/fashion-mnist
    python -m wdlab.datasets fetch fashion-mnist --out data/fashion-mnist --source file:///mnt/mirror/fashion
    python -m wdlab.datasets list

Each file comes from the first source holding it with the right content (the dataset's own mirrors unless
`--source` is given) and the folder appears, or replaces an earlier one, only once every file is verified and read.
"""

from __future__ import annotations

import argparse
import logging
import sys

from wdlab.datasets.registry import REGISTRY, get
from wdlab.datasets.sources import fetch
from wdlab.errors import StageError
from wdlab.stage import setup_logging

log = logging.getLogger("wd-lab.download")


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m wdlab.datasets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = cli.add_subparsers(dest="command", required=True)
    fetching = commands.add_parser("fetch", help="verify a dataset's files into a folder")
    fetching.add_argument("name", help=f"one of {', '.join(sorted(REGISTRY))}")
    fetching.add_argument("--out", required=True, help="the folder to write")
    fetching.add_argument(
        "--source", action="append", help="a folder, file:// or http(s):// base holding the files (repeatable)"
    )
    commands.add_parser("list", help="the registered datasets and their shapes")
    return cli


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging()
    if args.command == "list":
        for dataset in REGISTRY.values():
            shape = "×".join(map(str, dataset.image_shape))
            print(f"{dataset.name}: {dataset.title}, {len(dataset.classes)} classes, images {shape}")
        return
    try:
        dataset = get(args.name)
        fetch(dataset, args.out, args.source)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("wrote %s: %s, verified", args.out, dataset.title)


if __name__ == "__main__":
    main()
