"""Finished runs of a grid stage that has not finished yet: a rerun after a failure trains only the runs that are
missing.

DVC deletes a stage's outputs before it runs the stage, so the runs a failed stage did finish are kept here instead,
outside DVC (git-ignored `cache/runs/`), one file per run, written atomically as each run ends. A run's file is named
by a fingerprint of everything that decides its numbers, so changed settings never resume a stale run. The stage
clears its folder once its outputs are written.
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wdlab.files import atomic_path, project_root

log = logging.getLogger("wd-lab.runcache")

CACHE_DIR = Path("cache") / "runs"


class RunCache:
    """A stage's finished runs, {run key: plain data (dicts, lists, numbers, tensors)}, in one folder."""

    def __init__(self, stage: str, fingerprint: str):
        self.folder = project_root() / CACHE_DIR / stage / fingerprint

    def _file(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        """The run's record, or None if it has not finished (or its file is unreadable: it is trained again)."""
        path = self._file(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file only costs the run again
            log.warning("cached run %s is unreadable (%s): training it again", path, type(err).__name__)
            return None

    def save(self, key: str, record: Mapping[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(dict(record), buffer)
        with atomic_path(self._file(key)) as tmp:
            tmp.write_bytes(buffer.getvalue())

    def clear(self) -> None:
        """Forget every cached run of this stage, of any fingerprint: its outputs now hold them."""
        shutil.rmtree(self.folder.parent, ignore_errors=True)
