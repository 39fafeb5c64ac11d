"""What every stage entry point does: parse its command line, validate params.yaml, log, end with one clear line."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from wdlab.errors import StageError
from wdlab.settings import IMAGE_STUDIES, PARAMS_FILE, REGULARIZERS, ParamsError, Settings, load_settings
from wdlab.startup import resume_collection

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def parser(module_doc: str | None, prog: str) -> argparse.ArgumentParser:
    """An argument parser whose help is the stage module's docstring; the stage adds the files it reads and writes."""
    cli = argparse.ArgumentParser(prog=prog, description=(module_doc or "").strip())
    cli.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: params.yaml)")
    return cli


def parser_with_paths(module_doc: str | None, prog: str, paths: Mapping[str, str]) -> argparse.ArgumentParser:
    """A stage parser with required path options {name: help}: every file a stage reads or writes is named in
    dvc.yaml's `cmd`, so the paths live there alone."""
    cli = parser(module_doc, prog)
    for name, what in paths.items():
        cli.add_argument(f"--{name}", type=Path, required=True, help=what.replace("%", "%%"))  # argparse formats help
    return cli


def image_stage(base: str, study: str, regularizer: str | None = None) -> str:
    """A stage of an image study as dvc.yaml names it: `evaluate_images@fashion_mnist` (a foreach member over
    `images`), `train_images@cifar10-l2` (a matrix member: study, then regulariser)."""
    return f"{base}@{study}" + (f"-{regularizer}" if regularizer else "")


def add_study(cli: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The image study a stage works on: its section of params.yaml (dvc.yaml passes `${item}`)."""
    cli.add_argument(
        "--study", required=True, choices=IMAGE_STUDIES, help="the image study: its section of params.yaml"
    )
    return cli


def training_parser(
    module_doc: str | None, prog: str, grid_key: str, headline_key: str, **outputs: str
) -> argparse.ArgumentParser:
    """A training stage's command line: which run (the headline strength or one regulariser's whole grid), its data
    and where its outputs go."""
    cli = parser_with_paths(
        module_doc,
        prog,
        {
            "data": "the dataset the download/generate stage wrote",
            "out": "the run's folder (output): model.pt, run.json, history.csv and the study's other per-run files",
        }
        | {name.replace("_", "-"): what for name, what in outputs.items()},
    )
    cli.add_argument(
        "run",
        choices=("headline", *REGULARIZERS),
        help=(
            f"headline: the study's regulariser at strength {headline_key}; "
            f"a regulariser: its whole grid, {grid_key}.<name>"
        ),
    )
    return cli


def run_stage(
    main: Callable[[Settings, argparse.Namespace], None], cli: argparse.ArgumentParser, params_fix: str = ""
) -> None:
    """Parse arguments, validate params.yaml, run `main`; known failures exit with one clear line (a bad value's
    followed by `params_fix`, where the stage has one to give)."""
    resume_collection()  # the stage's imports are done
    args = cli.parse_args()
    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and `dvc queue kill` end a stage like Ctrl-C does
    stacks_on_sigusr1()
    try:
        main(load_settings(args.params), args)
    except (ParamsError, StageError) as err:
        fix = f"; {params_fix}" if params_fix and isinstance(err, ParamsError) else ""
        if isinstance(err, ParamsError) and (name := os.environ.get("DVC_STAGE")) and (back := _put_back(name)):
            fix += f"; {back}"
        print(f"error: {err}{fix}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {cli.prog} interrupted; earlier outputs are intact, rerun `dvc repro`", file=sys.stderr)
        sys.exit(130)


def restore_outputs(stage_name: str, root: str | None = None) -> tuple[list[str], list[str]]:
    """Put back the missing outputs of DVC stage `stage_name` as dvc.lock records them, from DVC's cache: the paths
    put back, and those it could not (their bytes are in no cache).

    A value refused by the stage itself means `validate` did not run first (`-s`/`--single-item`, `--downstream`), and
    DVC removed this stage's outputs just before it started it. The lock still names them, since the stage never
    finished: cached outputs come from the cache, uncached ones (metrics) from the copy DVC's run cache keeps."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    back, missing = [], []
    with Repo(root) as repo:
        (stage,) = repo.stage.collect(stage_name)
        links = repo.cache.local.cache_types
        for out in stage.outs:
            if out.exists or out.hash_info is None:  # kept (persist) or never made: nothing to put back
                continue
            # an uncached output comes back a plain file, as git tracks it, from the copy the run cache keeps (this
            # Repo's stage is its own: nothing else sees the flag)
            repo.cache.local.cache_types = links if out.use_cache else ["copy"]
            out.use_cache = True
            try:
                out.checkout()
            except (DvcException, OSError):  # not in the cache: named below
                pass
            (back if out.exists else missing).append(out.def_path)
    return back, missing


def _put_back(stage_name: str) -> str:
    """The words after a refused value when DVC ran the stage: what DVC removed is back, or what is not; empty when
    it removed nothing (validate itself, whose stamp DVC keeps)."""
    removed = f"validate did not run first (-s, --downstream), so DVC removed {stage_name}'s outputs before it ran"
    try:
        back, missing = restore_outputs(stage_name, os.environ.get("DVC_ROOT"))
    except Exception as err:  # the refusal is the message; a failed restore must not hide it
        return f"{removed} ({type(err).__name__} putting them back: `dvc checkout {stage_name}`)"
    if missing:
        return f"{removed}: {', '.join(missing)} are in no cache (git may hold them), the others are back"
    return f"{removed}: all are back, as dvc.lock records them" if back else ""


def stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>`: a stage that seems stuck prints where each of its threads is, to the process's stderr."""
    if not hasattr(signal, "SIGUSR1") or sys.__stderr__ is None:
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    except (OSError, ValueError):  # a stderr without a file descriptor (an embedding host): nothing to write to
        pass


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True)
    for noisy in ("mlflow", "alembic", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # MLflow's retries; the failure is reported once


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
