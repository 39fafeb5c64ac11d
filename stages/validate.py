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
from wdlab.files import write_text
from wdlab.settings import Settings

STAMP = "params.yaml passed validation (wdlab/settings.py); this text never changes, so no stage reruns for it\n"
# `dvc exp run -S` leaves its change in params.yaml when a stage fails, and no experiment: git holds the last good one
FIX = "no output was touched: fix params.yaml, or `git checkout params.yaml` to return to the committed params"


def main(settings: Settings, args: argparse.Namespace) -> None:
    write_text(args.stamp, STAMP)  # run_stage validated the params before calling main: reaching here is the check


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
