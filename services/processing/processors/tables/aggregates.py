"""Aggregates of many columns in as few scans as memory allows, and exact quantiles out of core.

DuckDB's `quantile_cont` is exact but holds every value of the column; when one column's values
do not fit the step's DuckDB memory, its quantiles come from `order_statistics` instead: exact
too, in a few streaming scans whose memory does not depend on the row count.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from services.processing.processors.base import ProgressCallback, StepInput
from services.processing.processors.duck import (
    batched,
    literal,
    parse_size,
    planned_wide,
    run_with_progress,
    scan_width,
)
from services.processing.processors.numeric import lerp, quantile_position

# Buckets a round of `order_statistics` counts an interval's values in (one GROUP BY group
# each): a round narrows an evenly spread interval 4096-fold.
BUCKETS = 4096
MAX_ROUNDS = 16  # then the values left are ordered by DuckDB's (spilling) sort
FETCH_FLOOR = 65_536  # values fetched into numpy to finish an interval, at least


@dataclass(frozen=True)
class Quantiles:
    """An exact quantile aggregate, quantile_cont(e, q); a list of values for a tuple of q."""

    levels: float | tuple[float, ...]

    def sql(self, expr: str) -> str:
        if isinstance(self.levels, tuple):
            return f"quantile_cont({expr}, [{', '.join(map(repr, self.levels))}])"
        return f"quantile_cont({expr}, {self.levels!r})"


Aggregate = str | Quantiles  # an SQL template of {e}, or exact quantiles


def aggregate_columns(
    con: duckdb.DuckDBPyConnection,
    src: str,
    exprs: Sequence[str],
    aggregates: dict[str, Aggregate],
    step: StepInput,
    rows: int,
    *,
    start: float = 0.0,
    end: float = 1.0,
) -> list[dict[str, Any]]:
    """Per expression the aggregates {key: "sql with {e}" or Quantiles}, in as few scans as
    memory allows (`rows`: the relation's row count)."""
    if not exprs:
        return []
    limit = parse_size(step.limits.memory_limit)
    held = 16 * max(rows, 1)  # an exact quantile keeps every value (8 bytes, plus slack)
    quantiles = {k: a for k, a in aggregates.items() if isinstance(a, Quantiles)}
    if quantiles and held > limit // 2:
        return _out_of_core(con, src, exprs, aggregates, step, rows, start, end)
    size = scan_width(step)
    if quantiles:
        size = min(size, max(1, limit // 2 // held))
    templates = {k: a.sql("{e}") if isinstance(a, Quantiles) else a for k, a in aggregates.items()}
    groups = batched(range(len(exprs)), size)
    keys = list(templates)
    out: list[dict[str, Any]] = []
    for n, group in enumerate(groups):
        select = ", ".join(templates[k].format(e=exprs[i]) for i in group for k in keys)
        part = (end - start) / len(groups)
        with planned_wide(con, len(group) * len(keys)):
            values = run_with_progress(
                con,
                f"SELECT {select} FROM {src}",
                step.report,
                "computing statistics",
                start=start + n * part,
                end=start + (n + 1) * part,
            )[0]
        for j in range(len(group)):
            out.append(dict(zip(keys, values[j * len(keys) : (j + 1) * len(keys)], strict=True)))
    return out


def _out_of_core(
    con: duckdb.DuckDBPyConnection,
    src: str,
    exprs: Sequence[str],
    aggregates: dict[str, Aggregate],
    step: StepInput,
    rows: int,
    start: float,
    end: float,
) -> list[dict[str, Any]]:
    """The aggregates when one column's values do not fit DuckDB's memory: the plain ones in
    batched scans, the quantiles narrowed column by column."""
    plain = {k: a for k, a in aggregates.items() if isinstance(a, str)}
    middle = start + (end - start) / 4
    out = (
        aggregate_columns(con, src, exprs, dict(plain), step, rows, start=start, end=middle)
        if plain
        else [{} for _ in exprs]
    )
    part = (end - middle) / len(exprs)
    for i, expr in enumerate(exprs):
        for key, aggregate in aggregates.items():
            if not isinstance(aggregate, Quantiles):
                continue
            levels = aggregate.levels
            values = exact_quantiles(
                con,
                src,
                expr,
                levels if isinstance(levels, tuple) else (levels,),
                step,
                start=middle + i * part,
                end=middle + (i + 1) * part,
            )
            if isinstance(levels, tuple):
                out[i][key] = None if values[0] is None else values
            else:
                out[i][key] = values[0]
    return out


def exact_quantiles(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    expr: str,
    levels: Sequence[float],
    step: StepInput,
    *,
    start: float = 0.0,
    end: float = 1.0,
) -> list[float | None]:
    """Quantiles of the non-null values of `expr` (linear interpolation, as numpy.quantile and
    DuckDB's quantile_cont), without holding the values."""
    sql = f"SELECT count(v), min(v), max(v) FROM (SELECT {expr} AS v FROM {relation})"
    middle = start + (end - start) / 4
    count, low, high = run_with_progress(
        con, sql, step.report, "computing quantiles", start=start, end=middle
    )[0]
    if not count:
        return [None] * len(levels)
    positions = [quantile_position(count, q) for q in levels]
    ranks = {rank for below, above, _ in positions for rank in (below, above)}
    values = order_statistics(
        con,
        relation,
        expr,
        sorted(ranks),
        count,
        low,
        high,
        fetch=fetch_limit(step),
        report=step.report,
        start=middle,
        end=end,
    )
    return [lerp(float(values[a]), float(values[b]), g) for a, b, g in positions]


def fetch_limit(step: StepInput) -> int:
    """Values `order_statistics` may fetch into numpy to finish an interval (16 bytes each,
    a sixteenth of the step's numpy budget)."""
    return max(FETCH_FLOOR, step.limits.batch_memory_bytes // 256)


@dataclass(frozen=True)
class _Interval:
    """Values between `low` and `high` (inclusive): `count` of them, `below` values under."""

    low: Any
    high: Any
    below: int
    count: int
    ranks: tuple[int, ...]


def order_statistics(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    expr: str,
    ranks: Sequence[int],
    count: int,
    low: Any,
    high: Any,
    *,
    fetch: int,
    report: ProgressCallback,
    start: float = 0.0,
    end: float = 1.0,
) -> dict[int, Any]:
    """The values at 0-based `ranks` of the `count` non-null values of `expr` (BIGINT or
    DOUBLE, between `low` and `high`) in ascending order.

    Each round is one scan that counts the values of every open interval in BUCKETS
    equal-width buckets, with each bucket's min and max; the bucket holding a rank becomes
    its next interval, bounded by those. Buckets are a non-decreasing function of the value,
    so a bucket's values are exactly those between its min and max. An interval is finished
    when its values are equal or at most `fetch` (then fetched and sorted).
    """
    found: dict[int, Any] = {}
    intervals = [_Interval(low, high, 0, count, tuple(sorted(set(ranks))))]
    for round_ in range(MAX_ROUNDS + 1):
        pending: list[_Interval] = []
        for interval in intervals:
            if interval.low == interval.high:
                found.update(dict.fromkeys(interval.ranks, interval.low))
            elif interval.count <= fetch:
                found.update(_fetch(con, relation, expr, interval))
            elif round_ == MAX_ROUNDS or _bucket(interval) is None:
                found.update(_sort(con, relation, expr, interval, report, start))
            else:
                pending.append(interval)
        if not pending:
            return found
        fraction = start + (end - start) * (1 - 0.5 ** (round_ + 1))
        intervals = _narrow(con, relation, expr, pending, report, fraction)
    raise AssertionError("the last round finishes every interval")


def _bucket(interval: _Interval) -> str | None:
    """SQL of `v`'s bucket in the interval, 0..BUCKETS-1, non-decreasing in v; None when the
    interval cannot be split that way."""
    low, high = interval.low, interval.high
    if isinstance(low, int) and isinstance(high, int):
        # Exact integer arithmetic: the lowest value in bucket 0, the highest in a later one.
        return f"(v::HUGEINT - {low}) * {BUCKETS} // {high - low + 1}"
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        # -inf, the finite values and +inf apart: the next round knows the finite bounds.
        ends = f"WHEN v = {literal(-math.inf)} THEN 0 WHEN v = {literal(math.inf)} THEN 2"
        return f"CASE {ends} ELSE 1 END"
    # Halves: the width of any two doubles is then finite.
    half_width = high * 0.5 - low * 0.5
    scale = BUCKETS / half_width if half_width > 0 else math.inf
    if not math.isfinite(scale):
        return None
    offset = f"v * 0.5 - {literal(low * 0.5)}"
    return f"least({BUCKETS - 1}, greatest(0, floor(({offset}) * {literal(scale)})))::BIGINT"


def _values(relation: str, expr: str) -> str:
    return f"(SELECT {expr} AS v FROM {relation})"


def _between(interval: _Interval) -> str:
    return f"v BETWEEN {literal(interval.low)} AND {literal(interval.high)}"


def _narrow(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    expr: str,
    pending: list[_Interval],
    report: ProgressCallback,
    fraction: float,
) -> list[_Interval]:
    """One scan: each pending interval's ranks moved into the buckets that hold them."""
    which = " ".join(f"WHEN {_between(iv)} THEN {i}" for i, iv in enumerate(pending))
    buckets = " ".join(f"WHEN {_between(iv)} THEN {_bucket(iv)}" for iv in pending)
    where = " OR ".join(f"({_between(iv)})" for iv in pending)
    sql = (
        f"SELECT i, b, count(*), min(v), max(v) FROM (SELECT v, CASE {which} END AS i,"
        f" CASE {buckets} END AS b FROM {_values(relation, expr)} WHERE {where})"
        " GROUP BY i, b ORDER BY i, b"
    )
    rows = run_with_progress(con, sql, report, "computing quantiles", start=fraction, end=fraction)
    narrowed: list[_Interval] = []
    for i, interval in enumerate(pending):
        below = interval.below
        ranks = list(interval.ranks)
        for _, _, n, low, high in (row for row in rows if row[0] == i):
            inside = tuple(r for r in ranks if below <= r < below + n)
            if inside:
                narrowed.append(_Interval(low, high, below, n, inside))
            below += n
    return narrowed


def _fetch(
    con: duckdb.DuckDBPyConnection, relation: str, expr: str, interval: _Interval
) -> dict[int, Any]:
    sql = f"SELECT v FROM {_values(relation, expr)} WHERE {_between(interval)}"
    (values,) = con.execute(sql).fetchnumpy().values()
    ordered = np.sort(np.asarray(values))
    return {r: ordered[r - interval.below].item() for r in interval.ranks}


def _sort(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    expr: str,
    interval: _Interval,
    report: ProgressCallback,
    fraction: float,
) -> dict[int, Any]:
    """The ranks by DuckDB's sort of the interval's values (it spills to disk)."""
    wanted = ", ".join(str(r - interval.below) for r in interval.ranks)
    sql = (
        f"SELECT n, v FROM (SELECT v, row_number() OVER (ORDER BY v) - 1 AS n"
        f" FROM {_values(relation, expr)} WHERE {_between(interval)}) WHERE n IN ({wanted})"
    )
    rows = run_with_progress(con, sql, report, "computing quantiles", start=fraction, end=fraction)
    by_position = dict(rows)
    return {r: by_position[r - interval.below] for r in interval.ranks}
