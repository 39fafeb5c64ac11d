"""What the report stages share: one seaborn look, λ axes, t-interval bands over seeds, atomic PNG output, publishing
the page."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display in CI or under DVC

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from wdlab.files import atomic_path, write_text  # noqa: E402
from wdlab.results import fmt_lambda  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

    from wdlab.tracking import Tracker

log = logging.getLogger("wd-lab.report")

PALETTE = "colorblind"
DPI = 130


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The `level` t-interval of the mean over seeds, mean ± t·s/√n: the interval the pages' text and metrics use
    (wdlab.results.stats); the mean alone with one seed. Missing values (a diverged run) are left out."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else math.nan
        return mean, mean
    from scipy.special import stdtrit  # = scipy.stats.t.ppf, without importing scipy.stats

    half = float(stdtrit(len(values) - 1, (1 + level) / 2)) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def t_interval_log(values: Sequence[float]) -> tuple[float, float]:
    """The t-interval for a log axis: where its lower end reaches 0 or below (a positive quantity whose seeds spread
    as widely as its mean) it is cut at the smallest seed's value, which a log axis can draw."""
    low, high = t_interval(values)
    if low <= 0:
        positive = [v for v in values if v > 0]
        low = min(positive) if positive else low
    return low, high


# Every curve over seeds: the mean with its 95 % t-interval, the interval the pages' numbers carry; on a log axis the
# interval's lower end is cut where it reaches 0 (band_note says so in the figure).
SEED_BAND = {"errorbar": t_interval}
LOG_BAND = {"errorbar": t_interval_log}


def set_theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)


def lambda_palette(strengths: Sequence[float]) -> dict[float, tuple]:
    """A sequential colour per λ (light = weak decay, dark = strong), readable for colour-blind readers."""
    colours = sns.color_palette("viridis_r", n_colors=len(strengths))
    return dict(zip(sorted(strengths), colours))


def lambda_axis(ax: plt.Axes, strengths: Sequence[float]) -> None:
    """Symmetric-log λ axis with a labelled tick at each λ of the grid: log-spaced values stay evenly
    spaced, λ = 0 still has a place, and every point reads off directly."""
    values = sorted(set(float(v) for v in strengths))
    positive = [v for v in values if v > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0, linscale=0.5)
    ax.set_xlim(0, max(values) * 1.6 if positive else 1.0)
    ax.set_xticks(values, [fmt_lambda(v) for v in values], rotation=30)
    ax.minorticks_off()


def curves_vs_strength(ax: plt.Axes, long: pd.DataFrame, y: str, hue: str, log: bool = False) -> None:
    """Each `hue` value of a long table a curve of `y` against the strength (column `lambda`): the mean over seeds
    with its 95 % t-interval (`log`: cut for a log axis), markers at the grid's strengths."""
    band = LOG_BAND if log else SEED_BAND
    sns.lineplot(data=long, x="lambda", y=y, hue=hue, style=hue, markers=True, dashes=False, ax=ax, **band)


def save(fig: plt.Figure, path: Path) -> Path:
    """Write a PNG atomically and close the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def relative_to_page(pngs: Sequence[Path], page: Path) -> list[str]:
    """Links to the figures from the Markdown page, so the page renders wherever the repository is."""
    return [Path(os.path.relpath(png, page.parent)).as_posix() for png in pngs]


def band_note(by_seed: pd.DataFrame, log: bool = False) -> str:
    """What a band is and how many seeds it summarises, for figure titles; `log`: where it is cut on a log axis."""
    seeds = by_seed["seed"].nunique()
    if seeds < 2:
        return "one seed: no interval"
    cut = "; where it reaches 0: cut at the lowest seed" if log else ""
    return f"mean, 95 % t-interval, n = {seeds} seeds{cut}"


def publish(
    page: Path, text: str, pngs: Sequence[Path], tracker: Tracker, records: Mapping[str, Path], folder: str = "report"
) -> None:
    """Write the report page and attach it, with its figures, to the MLflow runs of the training stages' records
    (in the runs' artifact `folder`)."""
    write_text(page, text)
    tracker.attach_report(records, [*pngs, page], folder)
    log.info("wrote %s and %d figures", page, len(pngs))
