"""What every stage shares: the command line, logging, errors, device choice and seeding."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from stages.files import StageInputError
from stages.settings import PARAMS_FILE, ParamsError, Settings, load_settings

log = logging.getLogger("wd-lab")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class StageError(RuntimeError):
    """A failure the user can fix; its message is one line naming the problem and the fix."""


def project_root() -> Path:
    """The repository the user works in, also under `dvc exp run --queue` (a temp copy)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True)
    for noisy in ("mlflow", "alembic", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # MLflow's retries; the failure is reported once


def run_stage(main: Callable[[Settings, argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse arguments, validate params.yaml, run `main`; known failures exit with one clear line."""
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args()
    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and `dvc queue kill` end a stage like Ctrl-C does
    try:
        settings = load_settings(args.params)
        main(settings, args)
    except (ParamsError, StageError, StageInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {parser.prog} interrupted; earlier outputs are intact, rerun `dvc repro`", file=sys.stderr)
        sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stage_parser(module_doc: str | None, prog: str) -> argparse.ArgumentParser:
    """An argument parser whose help is the stage module's docstring."""
    return argparse.ArgumentParser(prog=prog, description=(module_doc or "").strip())


def pick_device(name: str) -> torch.device:
    """`auto` takes CUDA, then Apple MPS, then the CPU; a named device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available[name]:
        raise StageError(f"device '{name}' is not available on this machine: set `device: auto` or `cpu` in params.yaml")
    return torch.device(name)


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU random stream per purpose (data, init, batch order), all from one seed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)
