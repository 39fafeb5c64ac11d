"""Report pages rendered from their Jinja2 templates (reports/templates/) and the metrics: the wording lives in the
template, every number and verdict in the metrics, and a table is a pandas DataFrame written by `to_markdown`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from wdlab.results import fmt_lambda, pm


def number(value: Any, digits: str = ".3g") -> str:
    """A number for prose; — for a missing one (a diverged run's)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:{digits}}"


def interval(record: Mapping[str, Any], digits: str = ".2g") -> str:
    """A record's 95 % t-interval, as `low … high`."""
    if record.get("ci_low") is None:
        return "no interval (one seed)"
    return f"{record['ci_low']:+{digits}} … {record['ci_high']:+{digits}}"


def markdown(table: pd.DataFrame, align: Sequence[str] | None = None) -> str:
    """A DataFrame of cells as a Markdown table (pandas' `to_markdown`, GitHub's pipe format); numbers are
    formatted before, so the table shows them as the page means them."""
    return table.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)


def environment(folder: Path) -> jinja2.Environment:
    """Templates of `folder`: an undefined name is an error (a page never prints an empty hole), blocks leave no
    blank lines of their own."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters |= {"pm": pm, "lam": fmt_lambda, "num": number, "interval": interval}
    return env


def render(template: Path, **context: Any) -> str:
    """The page `template` renders from `context`."""
    return environment(template.parent).get_template(template.name).render(**context)
