"""Progress bars for a person at a terminal: silent in CI and when output goes to a log file."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def interactive() -> bool:
    return not os.environ.get("CI") and sys.stderr.isatty()


def progress(iterable: Any = None, **options: Any) -> tqdm:
    """tqdm that draws only where someone watches; leaves no bar behind in the stage's log."""
    return tqdm(iterable, disable=not interactive(), leave=False, dynamic_ncols=True, **options)
