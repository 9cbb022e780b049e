"""Column profiles: numpy's figures, and how many columns are held at once."""

import numpy as np
import pytest

from services.processors.numeric import ProfileCache, find_extremes, profile_values
from services.processors.profiles import profile_workers
from tests.unit.processors.conftest import StepFactory

MIB = 1024**2


def test_profile_equals_numpy_in_file_order() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(1e6, 3.0, 2_500_000), [1e12, -1e12]])
    want_mean, want_std = values.mean(), values.std(ddof=1)
    want_quartiles = np.quantile(values, [0.25, 0.5, 0.75])
    profile = profile_values(values.copy())
    assert profile.mean == pytest.approx(want_mean, rel=1e-15)
    assert profile.std(ddof=1) == pytest.approx(want_std, rel=1e-12)
    assert [profile.quantile(q) for q in (0.25, 0.5, 0.75)] == want_quartiles.tolist()
    assert (profile.stats.minimum, profile.stats.maximum) == (-1e12, 1e12)


def test_large_integers_do_not_overflow_the_sum() -> None:
    values = np.array([2**62, 2**62, 2**62, -5], dtype=np.int64)
    profile = profile_values(values.copy())
    assert profile.mean == pytest.approx(values.astype(float).mean(), rel=1e-15)


def test_a_bigger_dataset_profiles_fewer_columns_at_once(make_step: StepFactory) -> None:
    step = make_step(batch_memory_bytes=512 * MIB, threads=2)
    assert profile_workers(step, 5_000_000) == 2
    assert profile_workers(step, 20_000_000) == 1
    assert profile_workers(make_step(batch_memory_bytes=1, threads=2), 10) == 1


def test_cache_drops_long_lists_of_repeated_values() -> None:
    cache = ProfileCache()
    cache.put("few", profile_values(np.array([1.0, 1.0, 2.0])))
    cache.put("many", profile_values(np.repeat(np.arange(100_001, dtype=float), 2)))
    few, many = cache.get("few"), cache.get("many")
    assert few is not None and few.stats.dup_keys is not None
    assert many is not None and many.stats.dup_keys is None and many.stats.dup_rows == 200_002


def test_extremes_hold_both_ends_of_a_column_with_their_rows() -> None:
    rng = np.random.default_rng(5)
    column = rng.normal(0.0, 1.0, 10_000)
    column[[3, 50]] = np.nan
    valid = ~np.isnan(column)
    ordered = np.sort(column[valid])
    extremes = find_extremes(column, valid, ordered)
    assert extremes is not None
    keep = 200  # 2% of 9,998 values, rounded up
    assert (extremes.low, extremes.high) == (ordered[keep - 1], ordered[-keep])
    want = np.flatnonzero(valid & ((column <= extremes.low) | (column >= extremes.high)))
    assert extremes.positions.tolist() == want.tolist() and len(want) == 2 * keep
    assert extremes.values.tolist() == column[want].tolist()


def test_no_extremes_for_few_values_or_long_ties() -> None:
    few = np.arange(100, dtype=float)
    assert find_extremes(few, None, few.copy()) is None
    ties = np.concatenate([np.zeros(9_000), np.arange(1_000, dtype=float)])
    assert find_extremes(ties, None, np.sort(ties)) is None
    nulls = np.array([True] * 5_000 + [False] * 5_000)
    integers = np.arange(10_000, dtype=np.int64)
    extremes = find_extremes(integers, nulls, integers[:5_000].copy())
    assert extremes is not None and extremes.positions.max() < 5_000
