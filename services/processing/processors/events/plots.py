"""PNG plots of count series: history, baseline band, flagged periods (matplotlib, Agg).

A Figure drawn on its own Agg canvas: no pyplot, no global backend or figure registry, so
plots are safe in any thread of a worker. Imported only by a running step.
"""

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class SeriesPlot:
    title: str
    periods: list[date | datetime]  # the series' periods, oldest first
    counts: np.ndarray
    recent_start: int  # index in `periods` of the first recent period
    mean: float  # NaN without a baseline
    lower: float  # the model's 2.5% and 97.5% quantiles
    upper: float
    flagged: np.ndarray  # bool per period
    trend: tuple[float, float] | None  # (slope, intercept at the first recent period)


def draw(plot: SeriesPlot, path: Path) -> None:
    """Write the plot as a PNG."""
    fig = Figure(figsize=(9, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.asarray(plot.periods)
    ax.plot(x, plot.counts, color="#4a6fa5", linewidth=1.2, marker="o", markersize=2.5)
    if np.isfinite(plot.mean):
        ax.axhline(plot.mean, color="#555555", linewidth=1, linestyle="--", label="baseline mean")
        ax.axhspan(plot.lower, plot.upper, color="#999999", alpha=0.2, label="baseline 95%")
    if plot.recent_start < len(x):
        half = (x[1] - x[0]) / 2 if len(x) > 1 else 0  # the span covers whole periods
        left, right = x[plot.recent_start] - half, x[-1] + half
        ax.axvspan(left, right, color="#f2d16b", alpha=0.25, label="recent")
    if plot.flagged.any():
        ax.scatter(
            x[plot.flagged], plot.counts[plot.flagged], color="#c0392b", zorder=3, label="flagged"
        )
    if plot.trend is not None:
        slope, intercept = plot.trend
        steps = np.arange(len(x) - plot.recent_start)
        ax.plot(x[plot.recent_start :], intercept + slope * steps, color="#c0392b", label="trend")
    ax.set_title(plot.title, fontsize=10)
    ax.set_ylabel("events")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=8)
    # Fixed margins: tight_layout would measure every label, the slowest part of a plot.
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.12)
    fig.savefig(path, format="png")
