"""Column profiles: numpy's figures, and how many columns are held at once."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from schemas.domain.records import ColumnInfo, DatasetFormat
from services.processing.processors.base import ComputeLimits, StepInput
from services.processing.processors.duck import connect, parquet_source, parquet_types
from services.processing.processors.numeric import ProfileCache, find_extremes, profile_values
from services.processing.processors.tables import profiles as profiles_module
from services.processing.processors.tables.profiles import profile_workers
from tests.unit.processors.conftest import StepFactory, write_parquet

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
    step = make_step(limits=ComputeLimits(batch_memory_bytes=512 * MIB, threads=2))
    assert profile_workers(step, 5_000_000) == 2
    assert profile_workers(step, 20_000_000) == 1
    tiny = make_step(limits=ComputeLimits(batch_memory_bytes=1, threads=2))
    assert profile_workers(tiny, 10) == 1


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


def test_columns_of_every_width_profile_like_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Narrower types are fetched through DuckDB's casts to BIGINT and DOUBLE."""
    monkeypatch.setattr(profiles_module, "SMALL_VALUES", 0)  # a fetch task per column
    rng = np.random.default_rng(11)
    ints = rng.integers(-1000, 1000, 5000)
    floats = np.round(rng.normal(0.0, 10.0, 5000), 2)
    floats[[3, 9]] = np.nan
    nulls = rng.random(5000) < 0.05
    table = pa.table(
        {
            "i32": pa.array(ints.astype(np.int32), mask=nulls),
            "i64": pa.array(ints, mask=nulls),
            "f32": pa.array(floats.astype(np.float32), mask=nulls),
            "f64": pa.array(floats, mask=nulls),
        }
    )
    path = write_parquet(table, tmp_path / "widths.parquet")
    columns = [
        ColumnInfo(name=f.name, type="integer" if f.name[0] == "i" else "float", null_count=0)
        for f in table.schema
    ]
    step = StepInput(
        parquet_path=path,
        columns=columns,
        dataset_format=DatasetFormat.parquet,
        output_dir=tmp_path,
        artifact_suffix="",
        report=lambda fraction, message: None,
        limits=ComputeLimits(threads=2),
    )
    with connect(step) as con:
        types = parquet_types(con, path)
        got = profiles_module.numeric_profiles(
            con, step, parquet_source(path), columns, types, len(ints)
        )
    for name in ("i32", "i64", "f32", "f64"):
        values = table[name].to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[~np.isnan(values)]
        profile = got[name]
        assert profile.count == len(values), name
        assert profile.mean == pytest.approx(values.mean(), rel=1e-12), name
        assert [profile.quantile(q) for q in (0.25, 0.5, 0.75)] == np.quantile(
            values, [0.25, 0.5, 0.75]
        ).tolist(), name
        assert profile.stats.distinct == len(np.unique(values)), name
    assert got["i32"].extremes is not None and got["i64"].extremes is not None
    assert got["f64"].extremes is not None
    assert got["f32"].extremes is None  # a FLOAT prints differently once fetched as DOUBLE


def test_cache_keeps_arrays_up_to_its_budget_and_figures_always() -> None:
    rng = np.random.default_rng(9)
    column = rng.normal(0.0, 1.0, 100_000)
    ordered = np.sort(column)
    profile = profile_values(column.copy())
    profile = replace(profile, extremes=find_extremes(column, None, ordered))
    assert profile.extremes is not None
    size = profile.extremes.positions.nbytes + profile.extremes.values.nbytes
    cache = ProfileCache(max_bytes=size + 100)
    cache.put("a", profile)
    cache.put("b", profile)  # over the budget: its figures only
    cache.put("a", profile)  # replacing a profile frees what it held
    a, b = cache.get("a"), cache.get("b")
    assert a is not None and a.extremes is not None
    assert b is not None and b.extremes is None and b.stats.dup_keys is None
    assert (b.mean, b.stats.quantiles) == (profile.mean, profile.stats.quantiles)
