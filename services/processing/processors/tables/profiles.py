"""Exact statistics of numeric columns, computed once per job and shared by its steps.

A column's profile comes from one fetch of every row into numpy, in file order: the mean
and variance of the non-null values first, in two passes as pandas computes them, then one
sort for the minimum, maximum, quartiles, distinct count and histogram (numeric.SortedStats),
and last the extremes (numeric.Extremes: the lowest and highest values with their rows).
Every step of a job reads the same Parquet copy, so a column profiled by one step
(metrics, say) is not read again by the next (anomalies' z-score or IQR, normalize's
median fill or min-max scaling).

A column whose values do not fit the step's numpy budget (`batch_memory_bytes`) is profiled
by DuckDB instead, in streaming scans whose memory does not grow with the rows: the same
figures, exact (the quartiles from `aggregates.order_statistics`), without extremes or the
list of repeated values.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np

from schemas.domain.records import ColumnInfo
from services.processing.processors.arrays import read_numbers
from services.processing.processors.base import StepInput
from services.processing.processors.columns import quote, value_expr
from services.processing.processors.duck import (
    batched,
    literal,
    map_with_progress,
    parquet_source,
    scan_width,
)
from services.processing.processors.numeric import (
    QUANTILES,
    ColumnProfile,
    SortedStats,
    find_extremes,
    histogram_edges,
    histogram_of,
    inner_edges,
    lerp,
    moments_scale,
    profile_values,
    quantile_position,
)
from services.processing.processors.tables.aggregates import fetch_limit, order_statistics

SMALL_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
# Bytes per row while a column is profiled: every row's value and validity, the sorted
# non-null values, and a few boolean masks.
BYTES_PER_VALUE = 24
# Up to this many values (rows x columns), columns are fetched in one query in the calling
# thread: on small data, a query and a thread per column cost more than the work.
SMALL_VALUES = 1_000_000
BATCH_ROWS = 1 << 20  # rows a fetch holds in DuckDB's memory at once


def fetched_expr(column: ColumnInfo, duck_type: str) -> str:
    """The column as fetched for profiling: BIGINT or DOUBLE, a float NaN as NULL."""
    cast = "BIGINT" if duck_type in SMALL_INTEGERS else "DOUBLE"
    return f"CAST({value_expr(column.name, duck_type)} AS {cast})"


def fetch_small(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    columns: Sequence[ColumnInfo],
    types: dict[str, str],
) -> list[ColumnProfile]:
    """Profiles of columns of a small dataset, from one query (a batch of columns at a time
    when there are many)."""
    profiles: list[ColumnProfile] = []
    for batch in batched(columns, scan_width(step)):
        select = ", ".join(f"{fetched_expr(c, types[c.name])} AS c{i}" for i, c in enumerate(batch))
        arrays = con.execute(f"SELECT {select} FROM {src}").fetchnumpy()
        profiles += [profile_values(non_null(arrays[f"c{i}"])) for i in range(len(batch))]
    return profiles


def non_null(values: np.ndarray) -> np.ndarray:
    """A writable copy of the non-null values of a fetched column."""
    # DuckDB returns a masked array when a column holds nulls.
    if np.ma.isMaskedArray(values):
        return np.ma.compressed(values)
    return np.array(values)  # a writable copy: profile_values sorts in place


def fetch_task(
    parquet: Path, column: ColumnInfo, duck_type: str, rows: int
) -> Callable[..., ColumnProfile]:
    """A map_with_progress task: fetch the column in file order, profile its non-null values
    and keep its extremes with their row numbers (for the outlier rules of anomalies)."""
    cast = "BIGINT" if duck_type in SMALL_INTEGERS else "DOUBLE"
    name = quote(column.name)
    expr = name if duck_type == cast else f"CAST({name} AS {cast})"
    # Extremes serve anomalies only where the fetched value prints as the stored one.
    keeps_extremes = duck_type in SMALL_INTEGERS or duck_type == "DOUBLE"
    # Every row is fetched, in Arrow batches (faster than fetchnumpy), so a value's
    # position is its row number.
    sql = f"SELECT {expr} FROM {parquet_source(parquet)}"

    def task(cursor: duckdb.DuckDBPyConnection) -> ColumnProfile:
        full, valid = read_numbers(cursor.sql(sql).to_arrow_reader(BATCH_ROWS), rows)
        values = full[valid] if valid is not None else full.copy()  # profile_values sorts it
        profile = profile_values(values)
        if keeps_extremes:
            profile = replace(profile, extremes=find_extremes(full, valid, values))
        return profile

    return task


def profile_task(
    step: StepInput, column: ColumnInfo, duck_type: str, rows: int
) -> Callable[..., ColumnProfile]:
    """The map_with_progress task profiling a numeric column: fetched into numpy when its
    values fit the step's budget, else by DuckDB."""
    if fits_in_memory(step, rows):
        return fetch_task(step.parquet_path, column, duck_type, rows)
    return sql_profile_task(step, column, duck_type)


def fits_in_memory(step: StepInput, rows: int) -> bool:
    """Whether a column of `rows` rows can be profiled in numpy within the step's budget."""
    return BYTES_PER_VALUE * rows <= step.limits.batch_memory_bytes


def sql_profile_task(
    step: StepInput, column: ColumnInfo, duck_type: str
) -> Callable[..., ColumnProfile]:
    """A map_with_progress task: the profile of a column too long for numpy, from DuckDB's
    streaming aggregates (figures equal to the numpy profile's; no extremes or repeated
    values kept)."""
    values = (
        f"(SELECT {fetched_expr(column, duck_type)} AS v FROM {parquet_source(step.parquet_path)})"
    )
    integer = duck_type in SMALL_INTEGERS
    fetch = fetch_limit(step)

    def task(cursor: duckdb.DuckDBPyConnection) -> ColumnProfile:
        # The exact sum of integers (HUGEINT); floats with compensated summation.
        total = "sum(v)" if integer else "fsum(v)"
        row = cursor.execute(f"SELECT count(v), min(v), max(v), {total} FROM {values}").fetchone()
        assert row is not None  # an aggregate without GROUP BY returns one row
        count, low, high, total_value = row
        if not count:
            return profile_values(np.empty(0, dtype=np.int64 if integer else np.float64))
        mean = float(total_value / count)
        # The sum of squared deviations from the mean, as pandas' second pass; the histogram's
        # counts below each inner edge.
        deviation = f"(v::DOUBLE - {literal(mean)})"
        edges = histogram_edges(low, high)
        inner = (
            []
            if edges is None
            else inner_edges(edges, np.dtype(np.int64 if integer else np.float64))
        )
        below = [f"count(*) FILTER (WHERE v < {literal(edge)})" for edge in inner]
        select = ", ".join([f"fsum({deviation} * {deviation})", *below])
        spread = cursor.execute(f"SELECT {select} FROM {values}").fetchone()
        assert spread is not None
        m2, scaled_mean = float(spread[0]), None
        scale = moments_scale(low, high, mean, m2 / count)
        if scale != 1.0:  # sums that overflow or squares that underflow: again, scaled
            x = f"(v::DOUBLE * {literal(scale)})"
            row = cursor.execute(f"SELECT fsum({x}) FROM {values}").fetchone()
            assert row is not None
            scaled_mean = float(row[0]) / count
            deviation = f"({x} - {literal(scaled_mean)})"
            row = cursor.execute(f"SELECT fsum({deviation} * {deviation}) FROM {values}").fetchone()
            assert row is not None
            mean, m2 = scaled_mean / scale, float(row[0])
        distinct = cursor.execute(
            f"SELECT count(*) FROM (SELECT v FROM {values} WHERE v IS NOT NULL GROUP BY v)"
        ).fetchone()
        assert distinct is not None
        positions = [quantile_position(count, q) for q in QUANTILES]
        ranks = sorted({rank for a, b, _ in positions for rank in (a, b)})
        ordered = order_statistics(
            cursor, values, "v", ranks, count, low, high, fetch=fetch, report=_quiet
        )
        stats = SortedStats(
            count=count,
            distinct=distinct[0],
            minimum=low,
            maximum=high,
            quantiles=[lerp(float(ordered[a]), float(ordered[b]), g) for a, b, g in positions],
            histogram=None if edges is None else histogram_of(edges, list(spread[1:]), count),
            dup_keys=None,
            dup_rows=0,
        )
        return ColumnProfile(stats, mean, m2, scale=scale, scaled_mean=scaled_mean)

    return task


def _quiet(fraction: float, message: str) -> None:
    """Progress of a task in a pool: map_with_progress reports the pool's, and interrupts."""


def profile_workers(step: StepInput, rows: int) -> int:
    """How many columns can be profiled at once within the step's memory budget."""
    budget = step.limits.batch_memory_bytes // (BYTES_PER_VALUE * max(rows, 1))
    return max(1, min(step.limits.threads or os.cpu_count() or 1, budget))


def numeric_profiles(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    columns: Sequence[ColumnInfo],
    types: dict[str, str],
    rows: int,
    *,
    start: float = 0.0,
    end: float = 1.0,
) -> dict[str, ColumnProfile]:
    """Profiles of numeric columns: from the job's cache, the missing ones computed now."""
    missing = [c for c in columns if step.profiles.get(c.name) is None]
    if rows * len(missing) <= SMALL_VALUES:
        for column, profile in zip(
            missing, fetch_small(con, step, src, missing, types), strict=True
        ):
            step.profiles.put(column.name, profile)
    else:
        map_with_progress(
            con,
            [cached(step, c.name, profile_task(step, c, types[c.name], rows)) for c in missing],
            step.report,
            "profiling columns",
            workers=profile_workers(step, rows),
            start=start,
            end=end,
        )
    return {c.name: _cached_profile(step, c.name) for c in columns}


def cached(
    step: StepInput, name: str, task: Callable[..., ColumnProfile]
) -> Callable[..., ColumnProfile]:
    """The task, its profile put in the job's cache as soon as it is made; it returns the cached
    one (extremes only while the cache's budget lasts), so the profiles of a step's many columns
    do not all hold their arrays at once."""

    def run(cursor: duckdb.DuckDBPyConnection) -> ColumnProfile:
        step.profiles.put(name, task(cursor))
        return _cached_profile(step, name)

    return run


def _cached_profile(step: StepInput, name: str) -> ColumnProfile:
    profile = step.profiles.get(name)
    assert profile is not None, f"{name} was profiled"
    return profile
