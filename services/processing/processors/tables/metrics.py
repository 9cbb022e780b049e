"""metrics: a profile of the dataset (counts, nulls, distinct, duplicates, stats, top values).

Figures equal pandas on the same data: `null_count` = isna().sum() (a float NaN counts
as null; the dataset column's null_count from ingest is the same figure), `distinct_count` =
nunique(), numeric `std` = std(ddof=1), `p25/p50/p75` = quantile(interpolation="linear"),
`histogram` = numpy.histogram(values, bins=10) and `top_values` = value_counts() (ties by
value ascending). `duplicate_rows` =
df[columns].duplicated().sum(): rows equal to an earlier row over the selected columns
(all dataset columns when `columns` is not given), nulls comparing equal.

Values of the column are shown as the dataset preview shows them (json_values.json_safe):
a decimal column's `min` and `max` are its stored values, exact strings, while the figures
computed from it (mean, std, quartiles, histogram) are floats; timestamps are ISO 8601, a
zone-aware one in UTC (+00:00).

Special values: a column holding +-inf has no finite mean, std or histogram (null, where
numpy.histogram raises). The mean and std are finite wherever the true ones are: sums that
overflow (values near 1e308) or squares that underflow (denormals) are taken again at a
power-of-two scale. Histogram edges are always finite and strictly increasing, and the counts
add up to the non-null count: where numpy's ten bins would repeat edges (a range too narrow
at its magnitude: values near 2^53, one huge value, denormals) or overflow (+-1e308), the
range gets as many equal-width bins as it has room for, one at least (numeric.histogram_edges).
"""

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeGuard

import duckdb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import StepInput, StepOutput
from services.processing.processors.columns import (
    FLOAT_DUCK_TYPES,
    is_numeric,
    is_temporal,
    reject_duplicate_columns,
    select_columns,
    value_expr,
)
from services.processing.processors.duck import (
    batched,
    connect,
    map_with_progress,
    parquet_rows,
    parquet_source,
    parquet_types,
    run_with_progress,
    scan_width,
)
from services.processing.processors.numeric import (
    QUANTILES,
    ColumnProfile,
    SortedStats,
    count_duplicate_rows,
    profile_values,
    sorted_stats,
)
from services.processing.processors.tables.groups import equal_rows
from services.processing.processors.tables.profiles import (
    SMALL_INTEGERS,
    SMALL_VALUES,
    cached,
    fetched_expr,
    fits_in_memory,
    non_null,
    profile_task,
    profile_workers,
)

TOP_VALUES = 10
MAX_DUP_KEYS = 100_000  # repeated key values passed to the duplicate count as a list
FILTER_KEYS = 2  # key columns that narrow the duplicate count (each is read in full)
COUNTED = {"VARCHAR", "BOOLEAN"}  # types whose top values numpy counts as DuckDB orders them
# Temporal types whose numpy values convert to the Python values DuckDB returns.
NATIVE_TEMPORAL = {"DATE", "TIMESTAMP", "TIMESTAMP_MS", "TIMESTAMP_S"}


class MetricsParams(BaseModel):
    """Profile the dataset."""

    model_config = ConfigDict(extra="forbid", title="metrics")
    columns: list[str] | None = Field(
        default=None, min_length=1, description="Columns to profile (default: all)."
    )
    _unique = field_validator("columns")(reject_duplicate_columns)


def check_columns(params: MetricsParams, columns: list[ColumnInfo]) -> None:
    """Every listed column must exist."""
    select_columns(params.columns, columns, field="columns")


def _sorts(column: ColumnInfo) -> bool:
    # Columns whose values fetch as fixed-width numpy arrays are profiled by sorting.
    return is_numeric(column) or column.type in {"date", "timestamp"}


def run(step: StepInput, params: MetricsParams) -> StepOutput:
    """Profile the selected columns of the typed copy."""
    selected = select_columns(params.columns, step.columns, field="columns")
    src = parquet_source(step.parquet_path)
    with connect(step) as con:
        types = parquet_types(con, step.parquet_path)
        exprs = {c.name: value_expr(c.name, types[c.name]) for c in selected}
        rows = parquet_rows(step.parquet_path)
        if rows * len(selected) <= SMALL_VALUES:
            aggregates, profiles, duplicates = _small_dataset(
                con, step, src, selected, types, exprs, rows
            )
            for name, profile in profiles.items():
                if isinstance(profile, ColumnProfile):
                    step.profiles.put(name, profile)
        else:  # the numeric profiles go to the job's cache as they are made
            rows, aggregates = _aggregates(con, step, src, selected, exprs)
            keys = RepeatedKeys(rows)
            profiles = _profiles(con, step, src, selected, types, exprs, rows, keys)
            duplicates = _duplicate_rows(con, step, selected, exprs, keys, rows)
    columns = {
        c.name: _column_summary(c, rows, aggregates.get(c.name, []), profiles[c.name])
        for c in selected
    }
    summary = {
        "row_count": rows,
        "column_count": len(selected),
        "duplicate_rows": duplicates,
        "columns": columns,
    }
    return StepOutput(summary=json_safe(summary), artifacts=[])


def _profiles(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    selected: list[ColumnInfo],
    types: dict[str, str],
    exprs: dict[str, str],
    rows: int,
    keys: "RepeatedKeys",
) -> dict[str, Any]:
    """Per column, a query each on a thread pool: a ColumnProfile (numeric; one a step already
    made is reused), SortedStats (date, timestamp) or (distinct count, top values). The
    repeated values of the columns that narrow the duplicate count most go to `keys`."""
    profiles: dict[str, Any] = {}
    for index, column in enumerate(selected):
        if profile := step.profiles.get(column.name):
            profiles[column.name] = keys.offer(index, exprs[column.name], profile)
    todo = [(i, c) for i, c in enumerate(selected) if c.name not in profiles]
    tasks = [
        keys.taking(
            index,
            exprs[c.name],
            cached(step, c.name, profile_task(step, c, types[c.name], rows))
            if is_numeric(c)
            else _sort_task(src, exprs[c.name])
            if fits_in_memory(step, rows)
            else _distinct_task(src, exprs[c.name]),
        )
        if _sorts(c)
        else _group_task(src, exprs[c.name])
        for index, c in todo
    ]
    results = map_with_progress(
        con,
        tasks,
        step.report,
        "profiling columns",
        workers=profile_workers(step, rows),
        start=0.1,
        end=0.8,
    )
    return profiles | {c.name: result for (_, c), result in zip(todo, results, strict=True)}


def _small_dataset(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    selected: list[ColumnInfo],
    types: dict[str, str],
    exprs: dict[str, str],
    rows: int,
) -> tuple[dict[str, list[Any]], dict[str, Any], int]:
    """Aggregates, profiles and duplicate count of a small dataset, in this thread: the columns
    from one query, then numpy (on little data, a query per column costs more than the work).
    """
    fetched = [c for c in selected if _sorts(c) or types[c.name] in COUNTED]
    step.report(0.0, "reading")
    arrays: list[Any] = []
    for batch in batched(fetched, scan_width(step)):  # one query, but for many columns
        select = ", ".join(
            f"{fetched_expr(c, types[c.name]) if is_numeric(c) else exprs[c.name]} AS c{i}"
            for i, c in enumerate(batch)
        )
        arrays += con.execute(f"SELECT {select} FROM {src}").fetchnumpy().values()
    step.report(0.1, "profiling columns")
    aggregates: dict[str, list[Any]] = {}
    profiles: dict[str, Any] = {}
    for column, values in zip(fetched, arrays, strict=True):
        present = non_null(values)
        if is_numeric(column):
            profiles[column.name] = step.profiles.get(column.name) or profile_values(present)
            continue
        if _sorts(column):
            profiles[column.name] = sorted_stats(present, numeric=False)  # sorts `present`
        else:
            profiles[column.name] = _value_counts(present)
        aggregates[column.name] = [len(present)]
        if types[column.name] in NATIVE_TEMPORAL:
            ends = [present[0].item(), present[-1].item()] if len(present) else [None, None]
            aggregates[column.name] += ends
    unfetched = [c for c in selected if not (_sorts(c) or types[c.name] in COUNTED)]
    # Columns whose figures numpy cannot give as DuckDB does: their own queries.
    in_sql = unfetched + [
        c
        for c in fetched
        if (is_temporal(c) and types[c.name] not in NATIVE_TEMPORAL) or _exact_ends(c)
    ]
    if in_sql:
        aggregates |= _aggregates(con, step, src, in_sql, exprs, start=0.1, end=0.2)[1]
    for column in unfetched:
        profiles[column.name] = _group_task(src, exprs[column.name])(con)
    step.report(0.8, "counting duplicate rows")
    if unfetched or any(is_numeric(c) and not _fetched_exactly(types[c.name]) for c in fetched):
        keys = RepeatedKeys(rows)
        for index, column in enumerate(selected):
            keys.offer(index, exprs[column.name], profiles[column.name])
        duplicates = _duplicate_rows(con, step, selected, exprs, keys, rows)
    else:
        duplicates = count_duplicate_rows(arrays)
    return aggregates, {c.name: profiles[c.name] for c in selected}, duplicates


def _exact_ends(column: ColumnInfo) -> bool:
    # A decimal's profile holds doubles: its min and max are read from DuckDB as stored.
    return column.type == "decimal"


def _fetched_exactly(duck_type: str) -> bool:
    # Equal fetched values mean equal stored ones: no two stored values fetch as one.
    return duck_type in SMALL_INTEGERS or duck_type in FLOAT_DUCK_TYPES


def _value_counts(values: np.ndarray) -> tuple[int, list[dict[str, Any]]]:
    """(distinct count, top values by count, ties by value) of non-null strings or booleans."""
    distinct, counts = np.unique(values, return_counts=True)
    top = np.argsort(-counts, kind="stable")[:TOP_VALUES]  # stable: equal counts stay sorted
    return len(distinct), [{"value": json_safe(distinct[i]), "count": int(counts[i])} for i in top]


def _aggregates(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    selected: list[ColumnInfo],
    exprs: dict[str, str],
    *,
    start: float = 0.0,
    end: float = 0.1,
) -> tuple[int, dict[str, list[Any]]]:
    """One scan (a batch of columns at a time when there are many): row count; non-null count
    of the non-numeric columns; min/max of temporal and decimal ones (the other numeric
    columns are profiled from their values)."""
    parts: dict[str, list[str]] = {}
    for c in selected:
        e = exprs[c.name]
        if is_numeric(c):
            if _exact_ends(c):
                parts[c.name] = [f"min({e})", f"max({e})"]
            continue
        parts[c.name] = [f"count({e})"]
        if is_temporal(c):
            parts[c.name] += [f"min({e})", f"max({e})"]
    batches = batched(list(parts), scan_width(step)) or [[]]
    rows = 0
    out: dict[str, list[Any]] = {}
    for n, batch in enumerate(batches):
        select = ", ".join(["count(*)"] + [p for name in batch for p in parts[name]])
        part = (end - start) / len(batches)
        values = iter(
            run_with_progress(
                con,
                f"SELECT {select} FROM {src}",
                step.report,
                "counting",
                start=start + n * part,
                end=start + (n + 1) * part,
            )[0]
        )
        rows = next(values)
        out |= {name: [next(values) for _ in parts[name]] for name in batch}
    return rows, out


def _sort_task(src: str, expr: str) -> Callable[..., Any]:
    sql = f"SELECT {expr} FROM {src} WHERE {expr} IS NOT NULL"

    def task(cursor: duckdb.DuckDBPyConnection) -> SortedStats:
        (values,) = cursor.execute(sql).fetchnumpy().values()
        return sorted_stats(np.asarray(values), numeric=False)

    return task


def _distinct_task(src: str, expr: str) -> Callable[..., Any]:
    """_sort_task's figures for a column too long to fetch: by DuckDB's GROUP BY (it spills)."""
    groups = f"SELECT count(*) AS n FROM {src} WHERE {expr} IS NOT NULL GROUP BY {expr}"
    sql = f"SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM ({groups})"

    def task(cursor: duckdb.DuckDBPyConnection) -> SortedStats:
        row = cursor.execute(sql).fetchone()
        assert row is not None  # an aggregate without GROUP BY returns one row
        distinct, count = row
        return SortedStats(count, distinct, None, None, [], None, None, 0)

    return task


def _group_task(src: str, expr: str) -> Callable[..., Any]:
    # One GROUP BY gives both the distinct count and the most frequent values.
    sql = (
        f"SELECT {expr}, count(*), count(*) OVER () FROM {src} WHERE {expr} IS NOT NULL"
        f" GROUP BY 1 ORDER BY 2 DESC, 1 ASC LIMIT {TOP_VALUES}"
    )

    def task(cursor: duckdb.DuckDBPyConnection) -> tuple[int, list[dict[str, Any]]]:
        result = cursor.execute(sql).fetchall()
        top = [{"value": json_safe(value), "count": count} for value, count, _ in result]
        return (result[0][2] if result else 0), top

    return task


class RepeatedKeys:
    """The repeated values of the FILTER_KEYS columns that narrow the duplicate count most.

    Offered each column's stats as they are profiled; only the best lists are kept, so the
    memory does not grow with the column count (a list can hold MAX_DUP_KEYS values).
    """

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._kept: list[tuple[int, int, str, np.ndarray]] = []
        self._lock = threading.Lock()

    def offer(self, index: int, expr: str, profile: Any) -> Any:
        """Consider the column's repeated values; the profile without them."""
        stats = profile.stats if isinstance(profile, ColumnProfile) else profile
        if not isinstance(stats, SortedStats):
            return profile
        keys = stats.dup_keys
        if stats.distinct == self._rows:  # no nulls, no repeats: no row has a twin
            keys = np.empty(0)
        candidates = self._rows - stats.count + stats.dup_rows
        if (
            _bindable(keys)
            and (stats.distinct == self._rows or candidates <= self._rows // 2)
            and len(keys) <= MAX_DUP_KEYS
        ):
            with self._lock:
                self._kept.append(
                    (0 if stats.distinct == self._rows else candidates, index, expr, keys)
                )
                self._kept.sort(key=lambda kept: kept[:2])
                del self._kept[FILTER_KEYS:]
        if stats.dup_keys is None:
            return profile
        stats = replace(stats, dup_keys=None)
        return replace(profile, stats=stats) if isinstance(profile, ColumnProfile) else stats

    def taking(self, index: int, expr: str, task: Callable[..., Any]) -> Callable[..., Any]:
        """The task, its result offered."""

        def offered(cursor: duckdb.DuckDBPyConnection) -> Any:
            return self.offer(index, expr, task(cursor))

        return offered

    def best(self) -> list[tuple[int, str, np.ndarray]]:
        """(candidate rows, column expression, repeated values), most selective first."""
        with self._lock:
            return [(candidates, expr, keys) for candidates, _, expr, keys in self._kept]


def _duplicate_rows(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    selected: list[ColumnInfo],
    exprs: dict[str, str],
    keys: RepeatedKeys,
    rows: int,
) -> int:
    """Rows equal to an earlier row, counted over only the rows that can have a twin.

    Two equal rows agree on every column, so a row whose value in a sorted column (numeric,
    date, timestamp) is unique can have no twin. The rows where the most selective such
    columns are null or hold a repeated value are usually a small fraction, and DuckDB then
    decodes the other columns only of the row batches that keep any. Over more columns than
    one query reads, rows are grouped a batch of columns at a time (groups.equal_rows).
    """
    keyed = keys.best()
    if keyed and keyed[0][0] == 0:
        return 0  # a column without nulls or repeated values: every row is unique
    conditions: list[str] = []
    params: list[Any] = []
    for _, e, dup_keys in keyed:
        if len(dup_keys):
            params.append(dup_keys.tolist())
            conditions.append(f"({e} IS NULL OR {e} IN (SELECT unnest(${len(params)})))")
        else:
            conditions.append(f"{e} IS NULL")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    columns = [exprs[c.name] for c in selected]
    if len(columns) > scan_width(step):
        src = parquet_source(step.parquet_path, row_numbers=True)
        table = equal_rows(
            con,
            step,
            src,
            columns,
            "metrics_equal_rows",
            where=where,
            params=params or None,
            message="counting duplicate rows",
            start=0.8,
        )
        counted = con.execute(f"SELECT count(*) - count(DISTINCT g) FROM {table}").fetchone()
        con.execute(f"DROP TABLE {table}")
        assert counted is not None  # an aggregate without GROUP BY returns one row
        return int(counted[0])
    # Nulls group together, as pandas' duplicated() compares them equal.
    src = parquet_source(step.parquet_path)
    groups = f"SELECT count(*) AS n FROM {src}{where} GROUP BY {', '.join(columns)}"
    sql = f"SELECT coalesce(sum(n - 1), 0) FROM ({groups})"
    result = run_with_progress(
        con, sql, step.report, "counting duplicate rows", start=0.8, params=params or None
    )
    return int(result[0][0])


def _bindable(keys: np.ndarray | None) -> TypeGuard[np.ndarray]:
    """Whether DuckDB can compare the column with these values passed as a list parameter."""
    if keys is None:
        return False
    # datetime64[ns] values become Python ints, which DuckDB will not compare with a
    # TIMESTAMP_NS column.
    return keys.dtype.kind != "M" or np.datetime_data(keys.dtype)[0] in ("D", "s", "ms", "us")


def _column_summary(
    column: ColumnInfo, rows: int, aggregate: list[Any], profile: Any
) -> dict[str, Any]:
    non_null = profile.count if isinstance(profile, ColumnProfile) else aggregate[0]
    out: dict[str, Any] = {
        "type": column.type,
        "null_count": rows - non_null,
        "null_ratio": (rows - non_null) / rows if rows else None,
    }
    if isinstance(profile, ColumnProfile):
        stats = profile.stats
        out.update(distinct_count=stats.distinct, min=stats.minimum, max=stats.maximum)
        if _exact_ends(column):
            out.update(min=aggregate[0], max=aggregate[1])
        out.update(mean=profile.mean, std=profile.std(ddof=1))
        for q, value in zip(QUANTILES, stats.quantiles, strict=True):
            out[f"p{round(q * 100)}"] = value
        out["histogram"] = stats.histogram
        return out
    if isinstance(profile, SortedStats):
        out["distinct_count"] = profile.distinct
    else:
        out["distinct_count"], top = profile
    if is_temporal(column):
        out.update(min=aggregate[1], max=aggregate[2])
    else:
        out["top_values"] = top
    return out
