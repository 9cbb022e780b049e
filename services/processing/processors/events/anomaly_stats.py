"""count_anomalies' statistics over arrays of series: baselines, tail p-values, z-scores, trends.

Each function takes one row per series (or a series x recent-period matrix), so a chunk of
thousands of series costs a few numpy and scipy calls. Imported only by a running step.
"""

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from services.processing.processors.events.common import NEGATIVE_BINOMIAL, NO_BASELINE, POISSON

TINY = 1.0e-20  # scipy.stats.linregress' guard against r = +-1


@dataclass(frozen=True)
class Baselines:
    """Per series: the model and its parameters (NaN where it has no baseline)."""

    model: np.ndarray  # int8: NO_BASELINE, POISSON or NEGATIVE_BINOMIAL
    mean: np.ndarray
    variance: np.ndarray  # the model's: the mean (Poisson) or the sample variance (NB)
    size: np.ndarray  # NB r = mean^2 / (var - mean)
    prob: np.ndarray  # NB p = r / (r + mean)


def baselines(
    periods: np.ndarray, total: np.ndarray, centred: np.ndarray, overdispersed: np.ndarray
) -> Baselines:
    """Baselines from each series' baseline periods (`periods`), the sum of their counts
    (`total`), n * sum(x^2) - sum(x)^2 (`centred`, computed exactly from integers) and whether
    the sample variance (ddof 1) exceeds the mean (decided on the same integers)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(periods > 0, total / periods, np.nan)
        sample_var = np.where(periods > 1, centred / (periods * (periods - 1.0)), np.nan)
        nb = overdispersed & (periods > 1)
        size = np.where(nb, mean**2 / (sample_var - mean), np.nan)
        prob = np.where(nb, size / (size + mean), np.nan)
    model = np.where(nb, NEGATIVE_BINOMIAL, np.where(periods > 0, POISSON, NO_BASELINE))
    variance = np.where(nb, sample_var, mean)
    return Baselines(model.astype(np.int8), mean, variance, size, prob)


def upper_tail(counts: np.ndarray, base: Baselines) -> np.ndarray:
    """P(X >= count) under each series' model (rows: series); NaN without a baseline."""
    p = np.full(counts.shape, np.nan)
    poisson = base.model == POISSON
    if poisson.any():
        p[poisson] = stats.poisson.sf(counts[poisson] - 1, base.mean[poisson, None])
    nb = base.model == NEGATIVE_BINOMIAL
    if nb.any():
        p[nb] = stats.nbinom.sf(counts[nb] - 1, base.size[nb, None], base.prob[nb, None])
    return p


def z_scores(counts: np.ndarray, base: Baselines) -> np.ndarray:
    """(count - mean) / sqrt(model variance); NaN without a baseline or with variance 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(base.variance)[:, None]
        return np.where(scale > 0, (counts - base.mean[:, None]) / scale, np.nan)


def band(base: Baselines, low: float = 0.025, high: float = 0.975) -> tuple[np.ndarray, ...]:
    """The model's `low` and `high` quantiles per series (the plots' baseline band)."""
    lower = np.full(base.mean.shape, np.nan)
    upper = np.full(base.mean.shape, np.nan)
    poisson = base.model == POISSON
    lower[poisson] = stats.poisson.ppf(low, base.mean[poisson])
    upper[poisson] = stats.poisson.ppf(high, base.mean[poisson])
    nb = base.model == NEGATIVE_BINOMIAL
    lower[nb] = stats.nbinom.ppf(low, base.size[nb], base.prob[nb])
    upper[nb] = stats.nbinom.ppf(high, base.size[nb], base.prob[nb])
    return lower, upper


def trends(recent: np.ndarray, min_events: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope of each row over 0..k-1 and its two-sided p-value, as
    scipy.stats.linregress computes them; NaN for rows under `min_events` events in all, and
    for every row when k < 3 (two points leave no degree of freedom for a p-value)."""
    rows, k = recent.shape
    slope = np.full(rows, np.nan)
    pvalue = np.full(rows, np.nan)
    chosen = recent.sum(axis=1) >= min_events
    if k < 3 or not chosen.any():
        return slope, pvalue
    y = recent[chosen].astype(np.float64)
    x = np.arange(k, dtype=np.float64)
    dx = x - x.mean()
    dy = y - y.mean(axis=1, keepdims=True)
    ssxm = (dx * dx).sum() / k
    ssxym = (dy * dx).sum(axis=1) / k
    ssym = (dy * dy).sum(axis=1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        # linregress: r is NaN when y is constant (ssym = 0, hence ssxym = 0).
        r = np.clip(np.where(ssym == 0, np.nan, ssxym / np.sqrt(ssxm * ssym)), -1.0, 1.0)
        df = k - 2
        t = r * np.sqrt(df / ((1.0 - r + TINY) * (1.0 + r + TINY)))
    slope[chosen] = ssxym / ssxm
    pvalue[chosen] = 2 * special.stdtr(df, -np.abs(t))
    return slope, pvalue
