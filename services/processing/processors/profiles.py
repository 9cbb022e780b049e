"""Exact statistics of numeric columns, computed once per job and shared by its steps.

A column's profile comes from one fetch of every row into numpy, in file order: the mean
and variance of the non-null values first, in two passes as pandas computes them, then one
sort for the minimum, maximum, quartiles, distinct count and histogram (numeric.SortedStats),
and last the extremes (numeric.Extremes: the lowest and highest values with their rows).
Every step of a job reads the same Parquet copy, so a column profiled by one step
(metrics, say) is not read again by the next (anomalies' z-score or IQR, normalize's
median fill or min-max scaling).
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
from services.processing.processors.duck import map_with_progress, parquet_source
from services.processing.processors.numeric import ColumnProfile, find_extremes, profile_values

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
    con: duckdb.DuckDBPyConnection, src: str, columns: Sequence[ColumnInfo], types: dict[str, str]
) -> list[ColumnProfile]:
    """Profiles of columns of a small dataset, from one query."""
    if not columns:
        return []
    select = ", ".join(f"{fetched_expr(c, types[c.name])} AS c{i}" for i, c in enumerate(columns))
    arrays = con.execute(f"SELECT {select} FROM {src}").fetchnumpy()
    return [profile_values(non_null(arrays[f"c{i}"])) for i in range(len(columns))]


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
        computed = fetch_small(con, src, missing, types)
    else:
        computed = map_with_progress(
            con,
            [fetch_task(step.parquet_path, c, types[c.name], rows) for c in missing],
            step.report,
            "profiling columns",
            workers=profile_workers(step, rows),
            start=start,
            end=end,
        )
    found = {c.name: profile for c in columns if (profile := step.profiles.get(c.name))}
    for column, profile in zip(missing, computed, strict=True):
        step.profiles.put(column.name, profile)
        found[column.name] = profile
    return {c.name: found[c.name] for c in columns}
