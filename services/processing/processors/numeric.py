"""Statistics of one column's non-null values, with numpy's and pandas' exact semantics.

Sorting once gives the exact distinct count, quantiles and histogram together and is
faster than DuckDB's hash-based count(DISTINCT) on high-cardinality columns.
The mean and variance are taken before the sort, in file order and in two passes, as
pandas does; DuckDB's streaming avg/stddev aggregates cost more than fetch, sum and sort.
Where those plain sums overflow or the squares of the deviations underflow (values near
1e300, denormals), they are taken again of the values times a power of two (`value_scale`,
`moments_scale`): exact scaling that keeps every figure finite where the true one is.
"""

import math
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

HISTOGRAM_BINS = 10
QUANTILES = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class SortedStats:
    count: int
    distinct: int
    minimum: Any
    maximum: Any
    quantiles: list[float | None]
    histogram: dict[str, list[float] | list[int]] | None
    dup_keys: np.ndarray | None  # the values that occur more than once (None: not kept)
    dup_rows: int  # how many values are one of dup_keys


def sorted_stats(values: np.ndarray, *, numeric: bool) -> SortedStats:
    """Stats of a 1-d array of non-null values, which is sorted in place."""
    # datetime64 sorts through numpy's generic path; its int64 view takes the vectorised one.
    (values.view(np.int64) if values.dtype.kind == "M" else values).sort()
    n = len(values)
    if n == 0:
        empty = np.empty(0, dtype=values.dtype)
        return SortedStats(0, 0, None, None, [None] * len(QUANTILES), None, empty, 0)
    changes = values[1:] != values[:-1]
    distinct = int(np.count_nonzero(changes)) + 1
    if distinct <= n // 2:
        # Few distinct values: walk the runs (one entry per distinct value, not per row).
        starts = np.concatenate(([0], np.flatnonzero(changes) + 1))
        lengths = np.diff(starts, append=n)
        repeated = lengths > 1
        dup_keys = values[starts[repeated]]
        dup_rows = int(lengths[repeated].sum())
    else:
        # Mostly distinct: gather the few repeated values.
        dup_keys = values[1:][~changes]
        if len(dup_keys):
            dup_keys = dup_keys[np.concatenate(([True], dup_keys[1:] != dup_keys[:-1]))]
        # Each repeated value occurs once more than its repeats: its first occurrence.
        dup_rows = n - distinct + len(dup_keys)
    if not numeric:
        return SortedStats(n, distinct, None, None, [], None, dup_keys, dup_rows)
    return SortedStats(
        count=n,
        distinct=distinct,
        minimum=values[0].item(),
        maximum=values[-1].item(),
        quantiles=[quantile_sorted(values, q) for q in QUANTILES],
        histogram=histogram_sorted(values),
        dup_keys=dup_keys,
        dup_rows=dup_rows,
    )


VARIANCE_BLOCK = 1 << 20  # deviations are squared in blocks: no full-size temporary array
CACHED_DUP_KEYS = 100_000  # a job keeps a column's repeated values only up to this many
# Values kept at each end of a column with their rows: 2% (IQR fences flag ~0.7% of normal
# data), at least 64 and at most 200,000 (3.2 MB a side).
EXTREME_SHARE = 0.02
EXTREME_MIN = 64
EXTREME_MAX = 200_000


@dataclass(frozen=True)
class Extremes:
    """A column's lowest and highest values with their row positions.

    Every value <= `low` and every value >= `high` is here. A rule that flags a value when a
    non-decreasing function of it leaves an interval (a z-score, modified z-score or IQR
    fence computed in floating point) flags a prefix and a suffix of the sorted values: if
    it flags neither `low` nor `high`, every value it flags is one of these.
    """

    positions: np.ndarray  # 0-based row numbers, ascending
    values: np.ndarray  # the column's values in those rows
    low: Any
    high: Any


def find_extremes(
    column: np.ndarray, valid: np.ndarray | None, ordered: np.ndarray
) -> Extremes | None:
    """The extremes of `column` (every row, file order; `valid` False at nulls, None if there
    are none) from its sorted non-null values; None when there are too few values or ties."""
    n = len(ordered)
    keep = min(EXTREME_MAX, max(EXTREME_MIN, math.ceil(n * EXTREME_SHARE)))
    if 2 * keep >= n:
        return None
    low, high = ordered[keep - 1], ordered[n - keep]
    if not low < high:
        return None
    outside = column <= low  # NaN compares False
    outside |= column >= high
    if valid is not None:
        outside &= valid
    positions = np.flatnonzero(outside)
    if len(positions) > 3 * keep:  # long runs of equal values at an end
        return None
    return Extremes(positions, column[positions], low.item(), high.item())


@dataclass(frozen=True)
class ColumnProfile:
    """Statistics of one numeric column's non-null values (a float NaN counts as null)."""

    stats: SortedStats
    mean: float | None
    m2: float | None  # sum of squared deviations from the mean, of the values times `scale`
    extremes: Extremes | None = None  # when the column's values were read in file order
    # A power of two the moments were taken at (1.0 unless plain sums overflow or underflow),
    # and the mean of the values times it.
    scale: float = 1.0
    scaled_mean: float | None = None

    @property
    def count(self) -> int:
        return self.stats.count

    def std(self, ddof: int) -> float | None:
        """Standard deviation with `ddof` (1: pandas' std, 0: numpy's and sklearn's)."""
        if self.m2 is None or self.count - ddof <= 0:
            return None
        return math.sqrt(self.m2 / (self.count - ddof)) / self.scale

    def standardizer(self) -> tuple[float, float, float] | None:
        """(s, m, d) of z = (x * s - m) / d, the population z-score (None: no values)."""
        if self.m2 is None or self.mean is None or not self.count:
            return None
        centre = self.mean if self.scaled_mean is None else self.scaled_mean
        return self.scale, centre, math.sqrt(self.m2 / self.count)

    def quantile(self, q: float) -> float | None:
        """A quartile (0.25, 0.5 or 0.75), linear interpolation as numpy.quantile."""
        return self.stats.quantiles[QUANTILES.index(q)]


# A job's cache may keep arrays (extremes, repeated values) up to 1/CACHE_SHARE of its numpy
# budget: at 5M rows the extremes of a column take ~3 MiB, so a 1 GiB budget keeps those of
# ~20 columns; the figures of the others stay, and anomalies scans for their flags.
CACHE_SHARE = 8


class ProfileCache:
    """Profiles by column name, for the steps of one job (they read the same Parquet copy).

    The arrays a profile carries (extremes, repeated values) are kept up to `max_bytes` in
    all; a profile put beyond it keeps its figures only, so the cache does not grow with the
    column count.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._profiles: dict[str, ColumnProfile] = {}
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._bytes = 0

    def get(self, name: str) -> ColumnProfile | None:
        with self._lock:
            return self._profiles.get(name)

    def put(self, name: str, profile: ColumnProfile) -> None:
        """Keep a profile for the job's later steps, without a long list of repeated values."""
        keys = profile.stats.dup_keys
        if keys is not None and len(keys) > CACHED_DUP_KEYS:
            profile = replace(profile, stats=replace(profile.stats, dup_keys=None))
        with self._lock:
            old = self._profiles.get(name)
            held = self._bytes - (_array_bytes(old) if old is not None else 0)
            if self._max_bytes is not None and held + _array_bytes(profile) > self._max_bytes:
                profile = replace(profile, stats=replace(profile.stats, dup_keys=None))
                profile = replace(profile, extremes=None)
            self._profiles[name] = profile
            self._bytes = held + _array_bytes(profile)


def _array_bytes(profile: ColumnProfile) -> int:
    keys = profile.stats.dup_keys
    size = keys.nbytes if keys is not None else 0
    if profile.extremes is not None:
        size += profile.extremes.positions.nbytes + profile.extremes.values.nbytes
    return size


def profile_values(values: np.ndarray) -> ColumnProfile:
    """The profile of a 1-d array of non-null numbers (sorted in place)."""
    n = len(values)
    mean = m2 = None
    if n:
        # Overflow and inf - inf give inf and NaN, checked below; numpy's warnings are noise.
        with np.errstate(over="ignore", invalid="ignore"):
            mean, m2 = moments(values)
    stats = sorted_stats(values, numeric=True)
    if mean is not None and m2 is not None:
        scale = moments_scale(stats.minimum, stats.maximum, mean, m2 / n)
        if scale != 1.0:
            scaled_mean, m2 = moments(values, scale)
            return ColumnProfile(
                stats, scaled_mean / scale, m2, scale=scale, scaled_mean=scaled_mean
            )
    return ColumnProfile(stats, mean, m2)


def moments(values: np.ndarray, scale: float = 1.0) -> tuple[float, float]:
    """(mean, sum of squared deviations from it) of the values times `scale`, in two passes."""
    n = len(values)
    if scale == 1.0:
        total = float(values.sum(dtype=np.float64))
    else:
        total = 0.0
        for begin in range(0, n, VARIANCE_BLOCK):
            block = np.multiply(values[begin : begin + VARIANCE_BLOCK], scale, dtype=np.float64)
            total += float(block.sum())
    mean = total / n
    m2 = 0.0
    for begin in range(0, n, VARIANCE_BLOCK):
        # One temporary per block: the values are cast to float64 by the subtraction.
        # Squared and summed as pandas does; np.dot would wake OpenBLAS's threads, which
        # spin on the cores the other profiles and DuckDB need.
        part = values[begin : begin + VARIANCE_BLOCK]
        if scale == 1.0:
            block = np.subtract(part, mean, dtype=np.float64)
        else:
            block = np.multiply(part, scale, dtype=np.float64)
            block -= mean
        m2 += float(np.square(block, out=block).sum())
    return mean, m2


# Below 2^-900 a sum of squares may have lost terms to underflow (subnormal squares); values
# below it, or spanning more than the largest double, are scaled by a power of two first.
TINY = 2.0**-900


def power_of_two_scale(top: float) -> float:
    """A power of two bringing `top` (> 0, finite) to [0.5, 1), at most 2^1000: exact to apply."""
    return math.ldexp(1.0, min(1000, -math.frexp(top)[1]))


def value_scale(low: Any, high: Any) -> float:
    """1.0, or the power of two to take differences of a column's values at: when its range
    overflows (max - min = inf) or its values are so small that differences lose digits."""
    low, high = float(low), float(high)
    top = max(abs(low), abs(high))
    if not (math.isfinite(top) and top > 0) or (math.isfinite(high - low) and top >= TINY):
        return 1.0
    return power_of_two_scale(top)


def moments_scale(low: Any, high: Any, mean: float, variance: float) -> float:
    """1.0 when the plain moments (`mean`, population `variance`) of values from `low` to
    `high` are accurate, else the power of two to take them at: where the sum or the squares
    overflowed, or the squares underflowed (a non-constant column of denormals has variance 0)."""
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low == high:
        return 1.0  # infinite values have no finite moments; a constant column's are exact
    scale = value_scale(low, high)
    if scale != 1.0:
        return scale
    if math.isfinite(mean) and math.isfinite(variance) and variance >= TINY:
        return 1.0
    return power_of_two_scale(max(abs(low), abs(high)))


def quantile_sorted(values: np.ndarray, q: float) -> float:
    """numpy.quantile(values, q) (method "linear") of an already sorted array."""
    low, high, gamma = quantile_position(len(values), q)
    return lerp(float(values[low]), float(values[high]), gamma)


def quantile_position(n: int, q: float) -> tuple[int, int, float]:
    """Where numpy.quantile(method="linear") of n sorted values reads: (the 0-based positions
    of the two values it interpolates between, the weight of the second)."""
    # numpy's virtual index n*q + (1 - q) - 1, exact for q in quarters.
    index = n * q + (1 - q) - 1
    low = math.floor(index)
    return low, min(low + 1, n - 1), index - low


def lerp(a: float, b: float, gamma: float) -> float:
    """numpy's _lerp: interpolate from the nearer end for stability."""
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def histogram_sorted(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, Any] | None:
    """numpy.histogram(values, bins) of a sorted array: equal-width bins, the last one closed
    (fewer bins where the range holds fewer distinct edges: `histogram_edges`)."""
    edges = histogram_edges(values[0].item(), values[-1].item(), bins)
    if edges is None:
        return None
    thresholds = inner_edges(edges, values.dtype)
    if values.dtype.kind == "f":
        below = np.searchsorted(values, np.array(thresholds), side="left").tolist()
    else:  # integer thresholds may lie beyond int64
        below = [_count_below(values, t) for t in thresholds]
    return histogram_of(edges, below, len(values))


def _count_below(values: np.ndarray, threshold: int) -> int:
    """How many of the sorted int64 values are < threshold (any Python int)."""
    info = np.iinfo(values.dtype)
    if threshold > info.max:
        return len(values)
    if threshold <= info.min:
        return 0
    return int(np.searchsorted(values, values.dtype.type(threshold), side="left"))


def histogram_edges(minimum: Any, maximum: Any, bins: int = HISTOGRAM_BINS) -> np.ndarray | None:
    """numpy.histogram's bin edges for values from `minimum` to `maximum` (None: not finite).

    Where numpy's edges would repeat, overflow or fail to hold an integer end (a range too
    narrow for the bins at that magnitude, a column of one huge value, a range beyond the
    largest double), these are strictly increasing, finite and hold every value: the range
    from the nearest doubles at or beyond the ends, in as many equal-width bins as it allows
    (one at least); a range that overflows is split at half scale.
    """
    first, last = float(minimum), float(maximum)
    if not (math.isfinite(first) and math.isfinite(last)):
        return None
    if first == last:
        first, last = first - 0.5, last + 0.5
    # An integer end may round inward (int64 max becomes 2^63): step out to a double holding it.
    if first > minimum:
        first = math.nextafter(first, -math.inf)
    if last < maximum:
        last = math.nextafter(last, math.inf)
    if first == last:  # one value too large to widen by 0.5
        first, last = math.nextafter(first, -math.inf), math.nextafter(last, math.inf)
    halve = not math.isfinite(last - first)
    for count in range(bins, 0, -1):
        if halve:
            edges = np.linspace(first / 2, last / 2, count + 1) * 2
        else:
            edges = np.linspace(first, last, count + 1)
        if np.isfinite(edges).all() and (edges[1:] > edges[:-1]).all():
            return edges
    raise AssertionError("one bin from first to last is strictly increasing")


def inner_edges(edges: np.ndarray, dtype: np.dtype) -> list[Any]:
    """The edges between bins, as values that count the same (x < e) against values of
    `dtype`: floats, or for an integer column the integers ceil(e) (exact, any size)."""
    inner = edges[1:-1]
    if dtype.kind in "iu":
        # For an integer x: x < e  <=>  x < ceil(e); avoids a float copy of the column.
        return [math.ceil(e) for e in inner.tolist()]
    return list(inner.tolist())


def histogram_of(edges: np.ndarray, below: list[int], count: int) -> dict[str, Any]:
    """The histogram from how many of the `count` values lie below each inner edge."""
    bounds = np.array([0, *below, count])
    return {"edges": edges.tolist(), "counts": np.diff(bounds).tolist()}


def count_duplicate_rows(columns: list[np.ndarray]) -> int:
    """Rows equal to an earlier row over these columns, nulls (masked values) comparing equal:
    pandas' df.duplicated().sum() for columns of one fixed-width or string type each."""
    rows = len(columns[0]) if columns else 0
    if rows < 2:
        return 0
    # Each column's values become their ranks (-1 for null); rows are equal when their ranks are.
    codes = np.full((len(columns), rows), -1, dtype=np.int64)
    for code, column in zip(codes, columns, strict=True):
        valid = ~np.ma.getmaskarray(column)
        values = np.ma.getdata(column)[valid]
        if len(values):
            sortable = values.view(np.int64) if values.dtype.kind == "M" else values
            code[valid] = np.unique(sortable, return_inverse=True)[1]
    ordered = codes[:, np.lexsort(codes)]
    return int(np.count_nonzero((ordered[:, 1:] == ordered[:, :-1]).all(axis=0)))
