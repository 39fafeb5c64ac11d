"""Validate the whole of params.yaml before any stage runs: a bad value stops `dvc repro` before DVC removes an output.

DVC removes a stage's outputs just before it starts the stage, so a stage that refused its own params would already
have lost its earlier results. Every stage descends from this one (its stamp is a dependency of each study's first
stage), so DVC runs it first and a refused value stops the pipeline with every output as it was. The stamp is the
same text whenever the params are valid, so no stage after it reruns because it ran, and their run cache still
restores earlier results (`-S wd=0` after `-S wd=3`).
"""

from __future__ import annotations

import argparse

from wdlab import stage
from wdlab.datasets.registry import REGISTRY
from wdlab.files import write_text
from wdlab.settings import IMAGE_STUDIES, ParamsError, Settings

STAMP = "params.yaml passed validation (wdlab/settings.py); this text never changes, so no stage reruns for it\n"
# `dvc exp run -S` leaves its change in params.yaml when a stage fails, and no experiment: git holds the last good one
FIX = "no output was touched: fix params.yaml, or `git checkout params.yaml` to return to the committed params"


def main(settings: Settings, args: argparse.Namespace) -> None:
    # run_stage validated the params before calling main; the dataset names are checked against the registry here,
    # which settings.py does not import (its models need pydantic alone)
    for key in IMAGE_STUDIES:
        if (name := settings.study(key).dataset) not in REGISTRY:
            raise ParamsError(
                f"{args.params}: {key}.dataset = {name!r} names no dataset of wdlab/datasets/registry.py: "
                f"choose one of {', '.join(sorted(REGISTRY))}"
            )
    write_text(args.stamp, STAMP)


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(
        __doc__,
        "python -m stages.validate",
        {
            "stamp": "written when the params are valid, always the same text (output)",
        },
    )


if __name__ == "__main__":
    stage.run_stage(main, parser(), params_fix=FIX)
