"""What the report stages share: one seaborn look, λ axes, seed bands, atomic PNG output, publishing the page."""

from __future__ import annotations

import logging
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


def bootstrap_band(values: Sequence[float], level: float = 95, resamples: int = 200, seed: int = 0) -> np.ndarray:
    """The `level` % bootstrap interval of the mean: exactly seaborn's `errorbar=("ci", level)` with
    `n_boot=resamples, seed=seed` (the same generator, draws, estimator and percentiles, so the same figures),
    drawn as one [resamples, n] array instead of seaborn's Python loop of `resamples` means per point: a figure
    of 10 λ × 101 epochs took ~2 s in that loop."""
    values = np.asarray(values)
    n = len(values)
    resampled = np.random.default_rng(seed).integers(0, n, (resamples, n), dtype=np.intp)  # = seaborn's per-draw calls
    mean = np.nanmean if np.isnan(np.sum(values)) else np.mean  # seaborn's switch when a value is missing
    edge = (100 - level) / 2
    return np.nanpercentile(mean(values[resampled], axis=1), (edge, 100 - edge))


# Every curve over seeds: the mean with its 95 % bootstrap confidence band. Seeded, so figures repeat exactly;
# 200 resamples, not seaborn's 1,000, as the band only guides the eye (the page's intervals are t-intervals).
# A bootstrap band stays within the seeds' values, so it draws on log axes where a t-interval can cross zero.
SEED_BAND = {"errorbar": bootstrap_band}


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


def curves_vs_strength(ax: plt.Axes, long: pd.DataFrame, y: str, hue: str) -> None:
    """Each `hue` value of a long table a curve of `y` against the strength (column `lambda`): the mean over seeds
    with its 95 % band, markers at the grid's strengths."""
    sns.lineplot(data=long, x="lambda", y=y, hue=hue, style=hue, markers=True, dashes=False, ax=ax, **SEED_BAND)


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


def band_note(by_seed: pd.DataFrame) -> str:
    """How many seeds a band summarises, for figure titles."""
    seeds = by_seed["seed"].nunique()
    return f"mean and 95 % band over {seeds} seeds" if seeds > 1 else "one seed"


def publish(
    page: Path, text: str, pngs: Sequence[Path], tracker: Tracker, records: Mapping[str, Path], folder: str = "report"
) -> None:
    """Write the report page and attach it, with its figures, to the MLflow runs of the training stages' records
    (in the runs' artifact `folder`)."""
    write_text(page, text)
    tracker.attach_report(records, [*pngs, page], folder)
    log.info("wrote %s and %d figures", page, len(pngs))
