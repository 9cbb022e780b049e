"""The design matrix of a latent-structure model: chosen columns of the typed copy as one
float64 numpy matrix, a row per kept dataset row.

Each chosen column is an item of one kind:

- numeric: its value as a float (integer, float and decimal columns). A `nonnegative` item
  holding a value below 0 is a ProcessorInputError naming the column and the first such row.
- binary: a 0/1 item. A boolean column is 0/1 (false/true); a number column must hold only
  0 and 1: another value is a ProcessorInputError naming the column, the first row holding
  one and the value.
- categorical: any scalar column; its distinct values are its categories ("levels"), in
  DuckDB's order of the column's type (numbers by value, text by code point: the order of
  pandas.Categorical's categories). Encoding "onehot" gives one 0/1 matrix column per level,
  named "column=level" (pandas.get_dummies with prefix_sep "="); encoding "codes" gives one
  matrix column holding the 0-based level code (pandas.Categorical(...).codes), as StepMix's
  categorical model and prince take them. A column of more than MAX_LEVELS distinct values is
  refused: it is an identifier, not an item.

Nulls (a float NaN is a null, as in pandas) follow the policy:

- drop_rows: a row with a null in any chosen column is left out
  (pandas `df.dropna(subset=columns)`);
- fail: the first null (lowest row, then first column) is a ProcessorInputError naming its
  column and row;
- fill: a numeric item's nulls become the mean of its values (`fillna(s.mean())`); a binary or
  categorical item's become its most frequent value, the smallest of equally frequent ones
  (`fillna(s.mode().iloc[0])`). Fill values come from every non-null value of the column.

Row numbers are 1-based dataset rows (as anomalies' row_number).

Memory: the matrix holds rows x width float64 values; the caller adds what its model fit
holds per row (`extra_bytes_per_row`: responsibilities, temporaries). When the total passes
the step's numpy share of the worker budget (`limits.batch_memory_bytes`), the reader refuses
before allocating the matrix: MemoryBudgetExceeded naming both sizes.

Reading: one aggregate query per batch of columns (null counts, first null row, means,
binary and sign checks) and one GROUP BY per categorical column (its levels and counts), then
a streaming scan per batch of columns whose record batches are copied into the matrix
(categories are coded in SQL through an ENUM of their levels). Progress is reported and
a cancel honoured between record batches.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa

from schemas.domain.records import ColumnInfo
from services.processing.processors.base import (
    MemoryBudgetExceeded,
    ProcessorInputError,
    StepInput,
)
from services.processing.processors.columns import is_numeric, quote, value_expr
from services.processing.processors.duck import (
    batched,
    connect,
    literal,
    parquet_rows,
    parquet_source,
    parquet_types,
    run_with_progress,
    scan_width,
)

Kind = Literal["numeric", "binary", "categorical"]
NullPolicy = Literal["drop_rows", "fail", "fill"]
Encoding = Literal["onehot", "codes"]

MAX_LEVELS = 10_000
FETCH_ROWS = 1 << 16  # rows of a record batch copied into the matrix at once
# Column types an item may have (nested types, intervals and blobs are not items).
SCALAR_TYPES = frozenset(
    {"integer", "float", "decimal", "boolean", "string", "date", "time", "timestamp"}
)


def is_scalar(column: ColumnInfo) -> bool:
    """A number, boolean, text, date, time or timestamp column."""
    return column.type in SCALAR_TYPES or column.type.startswith("timestamp")


def binary_or_categorical(column: ColumnInfo) -> Kind:
    """Number and boolean columns are 0/1 items; text and time columns categorical."""
    return "binary" if is_numeric(column) or column.type == "boolean" else "categorical"


@dataclass(frozen=True)
class Item:
    column: str
    kind: Kind
    nonnegative: bool = False  # numeric items only: refuse values below 0


@dataclass
class ItemStats:
    """One item's figures from the first pass over the data."""

    non_null: int = 0
    first_null: int | None = None  # 1-based row
    mean: float | None = None  # numeric items
    ones: int = 0  # binary items
    bad_row: int | None = None  # 1-based row of the first value the kind refuses
    bad_value: Any = None
    levels: list[str] = field(default_factory=list)  # categorical items, in code order
    counts: list[int] = field(default_factory=list)  # rows per level


@dataclass(frozen=True)
class DesignMatrix:
    values: np.ndarray  # (rows, width) float64, C order
    names: list[str]  # one per matrix column: the column, or "column=level" (one-hot)
    rows: np.ndarray  # (rows,) int64: the kept 1-based dataset rows
    items: list[Item]
    encoding: Encoding
    levels: dict[str, list[str]]  # categorical item -> its levels as text, in code order
    fill_values: dict[str, Any]  # item -> the value its nulls became (policy fill)
    filled: dict[str, int]  # item -> how many nulls were filled (policy fill)
    dropped: int  # rows left out for nulls (policy drop_rows)

    def spans(self) -> dict[str, slice]:
        """Item -> its matrix columns."""
        spans, at = {}, 0
        for item in self.items:
            width = _width(item, self.levels, self.encoding)
            spans[item.column] = slice(at, at + width)
            at += width
        return spans

    def summary(self) -> dict[str, Any]:
        """What the reader did with the rows (JSON-safe)."""
        out: dict[str, Any] = {"rows": len(self.rows), "dropped_rows": self.dropped}
        if self.filled:
            out["filled"] = {
                name: {"nulls": n, "value": self.fill_values[name]}
                for name, n in self.filled.items()
            }
        return out


def read_design(
    step: StepInput,
    items: Sequence[Item],
    *,
    nulls: NullPolicy,
    encoding: Encoding = "onehot",
    extra_bytes_per_row: int | Callable[[dict[str, list[str]]], int] = 0,
    start: float = 0.0,
    end: float = 1.0,
) -> DesignMatrix:
    """The items' matrix, names and kept rows (see the module docstring).

    `extra_bytes_per_row`: what the caller's fit holds per row besides the matrix, or a
    function of the categorical items' levels giving it.
    """
    items = list(items)
    checked, masked = start + (end - start) * 0.3, start + (end - start) * 0.5
    with connect(step) as con:
        types = parquet_types(con, step.parquet_path)
        total = parquet_rows(step.parquet_path)
        src = parquet_source(step.parquet_path, row_numbers=True)
        stats = _statistics(con, step, src, items, types, start=start, end=checked)
        _check_values(items, stats)
        fill_values: dict[str, Any] = {}
        filled: dict[str, int] = {}
        keep: np.ndarray | None = None
        with_nulls = [item for item in items if stats[item.column].non_null < total]
        if with_nulls and nulls == "fail":
            first = min(with_nulls, key=lambda i: stats[i.column].first_null or 0)
            row = stats[first.column].first_null
            raise ProcessorInputError(
                f"column {first.column!r} has a null at row {row} (null policy 'fail')",
                column=first.column,
                row=row,
            )
        if with_nulls and nulls == "fill":
            for item in with_nulls:
                fill_values[item.column] = _fill_value(item, stats[item.column])
                filled[item.column] = total - stats[item.column].non_null
        if with_nulls and nulls == "drop_rows":
            keep = _complete_rows(
                con, step, src, with_nulls, types, total, start=checked, end=masked
            )
        kept = total if keep is None else int(np.count_nonzero(keep))
        if kept == 0:
            raise ProcessorInputError(
                "no rows left: every row has a null in a chosen column (null policy 'drop_rows')"
                if total
                else "the dataset has no rows"
            )
        levels = {i.column: stats[i.column].levels for i in items if i.kind == "categorical"}
        widths = [_width(item, levels, encoding) for item in items]
        extra = (
            extra_bytes_per_row(levels) if callable(extra_bytes_per_row) else extra_bytes_per_row
        )
        _check_memory(step, kept, sum(widths), extra)
        # Zeros: the one-hot columns are set where a row holds the level.
        values = np.zeros((kept, sum(widths)), dtype=np.float64)
        reading = _Reading(con, step, src, types, stats, fill_values, encoding, keep, total)
        reading.fill(values, items, widths, start=masked, end=end)
    if keep is not None:
        values, levels = _drop_absent_levels(values, items, levels, encoding)
    names: list[str] = []
    for item in items:
        if item.kind == "categorical" and encoding == "onehot":
            names += [f"{item.column}={level}" for level in levels[item.column]]
        else:
            names.append(item.column)
    if keep is None:
        rows = np.arange(1, total + 1, dtype=np.int64)
    else:
        rows = np.flatnonzero(keep).astype(np.int64) + 1
    return DesignMatrix(
        values=values,
        names=names,
        rows=rows,
        items=items,
        encoding=encoding,
        levels=levels,
        fill_values=fill_values,
        filled=filled,
        dropped=total - kept,
    )


def _width(item: Item, levels: dict[str, list[str]], encoding: Encoding) -> int:
    if item.kind == "categorical" and encoding == "onehot":
        return len(levels[item.column])
    return 1


def _number(item: Item, duck_type: str) -> str:
    """The item as a DOUBLE expression, NaN as NULL."""
    return f"CAST({value_expr(item.column, duck_type)} AS DOUBLE)"


def _statistics(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    items: list[Item],
    types: dict[str, str],
    *,
    start: float,
    end: float,
) -> dict[str, ItemStats]:
    """Per item: non-null count, first null, mean or 1-count, first refused value, levels."""
    stats = {item.column: ItemStats() for item in items}
    batches = batched(items, scan_width(step))
    categorical = [item for item in items if item.kind == "categorical"]
    parts = len(batches) + len(categorical)
    part = (end - start) / max(1, parts)
    at = start
    for batch in batches:
        exprs: list[str] = []
        for item in batch:
            v = value_expr(item.column, types[item.column])
            exprs += [
                f"count({v})",
                f"min(file_row_number) FILTER (WHERE {v} IS NULL)",
            ]
            if item.kind == "numeric":
                x = _number(item, types[item.column])
                exprs.append(f"avg({x})")
                bad = f"{x} < 0" if item.nonnegative else "false"
            elif item.kind == "binary":
                x = _number(item, types[item.column])
                exprs.append(f"count(*) FILTER (WHERE {x} = 1)")
                bad = f"{x} NOT IN (0, 1)"
            else:
                continue
            exprs += [
                f"min(file_row_number) FILTER (WHERE {bad})",
                f"CAST(arg_min({v}, file_row_number) FILTER (WHERE {bad}) AS VARCHAR)",
            ]
        sql = f"SELECT {', '.join(exprs)} FROM {src}"
        (row,) = run_with_progress(
            con, sql, step.report, "reading the items", start=at, end=at + part
        )
        at += part
        values = iter(row)
        for item in batch:
            s = stats[item.column]
            s.non_null = int(next(values))
            s.first_null = _row(next(values))
            if item.kind == "categorical":
                continue
            if item.kind == "numeric":
                s.mean = next(values)
            else:
                s.ones = int(next(values))
            s.bad_row, s.bad_value = _row(next(values)), next(values)
    for item in categorical:
        v = value_expr(item.column, types[item.column])
        sql = (
            f"SELECT CAST({quote(item.column)} AS VARCHAR), count(*) FROM {src}"
            f" WHERE {v} IS NOT NULL GROUP BY {quote(item.column)}"
            f" ORDER BY {quote(item.column)} LIMIT {MAX_LEVELS + 1}"
        )
        message = f"reading the categories of {item.column}"
        found = run_with_progress(con, sql, step.report, message, start=at, end=at + part)
        at += part
        if len(found) > MAX_LEVELS:
            raise ProcessorInputError(
                f"column {item.column!r} has more than {MAX_LEVELS} distinct values:"
                " too many categories for an item",
                column=item.column,
            )
        stats[item.column].levels = [str(level) for level, _ in found]
        stats[item.column].counts = [int(n) for _, n in found]
    return stats


def _row(file_row_number: int | None) -> int | None:
    return None if file_row_number is None else int(file_row_number) + 1


def _check_values(items: list[Item], stats: dict[str, ItemStats]) -> None:
    """A ProcessorInputError for the first refused value (binary not 0/1, negative)."""
    for item in items:
        s = stats[item.column]
        if s.bad_row is None:
            continue
        if item.kind == "binary":
            message = (
                f"column {item.column!r} is a binary item but holds {s.bad_value} at row"
                f" {s.bad_row}: only 0 and 1 (or false and true) are allowed"
            )
        else:
            message = (
                f"column {item.column!r} holds the negative value {s.bad_value} at row"
                f" {s.bad_row}: the model needs values of 0 or more"
            )
        raise ProcessorInputError(message, column=item.column, row=s.bad_row)


def _fill_value(item: Item, s: ItemStats) -> Any:
    """The value an item's nulls become: mean (numeric) or mode, smallest first (others)."""
    if s.non_null == 0:
        raise ProcessorInputError(
            f"column {item.column!r} has no values to fill its nulls from (null policy 'fill')",
            column=item.column,
        )
    if item.kind == "numeric":
        return s.mean
    if item.kind == "binary":
        return 1 if s.ones > s.non_null - s.ones else 0
    best = max(range(len(s.counts)), key=lambda i: (s.counts[i], -i))
    return s.levels[best]


def _complete_rows(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    items: list[Item],
    types: dict[str, str],
    total: int,
    *,
    start: float,
    end: float,
) -> np.ndarray:
    """Whether each row has a value in every item (`items`: those with nulls)."""
    keep = np.ones(total, dtype=np.bool_)
    batches = batched(items, scan_width(step))
    share = (end - start) / len(batches)
    for n, batch in enumerate(batches):
        test = " OR ".join(f"{value_expr(i.column, types[i.column])} IS NULL" for i in batch)
        sql = f"SELECT CAST(({test}) AS UTINYINT) FROM {src}"
        at = 0
        begin = start + n * share
        for block in _stream(con, step, sql, "finding rows with nulls", begin, share, total):
            column = block.column(0)
            missing = np.frombuffer(
                column.buffers()[1], dtype=np.uint8, count=len(column), offset=column.offset
            )
            keep[at : at + len(column)] &= missing == 0
            at += len(column)
    return keep


def _check_memory(step: StepInput, rows: int, width: int, extra_bytes_per_row: int) -> None:
    """MemoryBudgetExceeded, naming the sizes, when the matrix and fit would not fit."""
    limit = step.limits.batch_memory_bytes
    matrix = rows * width * 8
    needed = matrix + rows * extra_bytes_per_row
    if needed > limit:
        raise MemoryBudgetExceeded(
            None,
            f"the design matrix of {rows:,} rows x {width:,} columns takes {_mib(matrix)}"
            f" and its fit {_mib(needed)} in all, over the step's numpy limit of {_mib(limit)}"
            " (limits.batch_memory_bytes, half the worker's memory budget): choose fewer"
            " columns or categories, or raise ASSAY_WORKER_MEMORY_BUDGET_MB",
        )


def _mib(n: int) -> str:
    return f"{math.ceil(n / 1024**2):,} MiB"


@dataclass
class _Reading:
    """The second pass: items copied into the matrix, a batch of columns per scan."""

    con: duckdb.DuckDBPyConnection
    step: StepInput
    src: str
    types: dict[str, str]
    stats: dict[str, ItemStats]
    fill_values: dict[str, Any]
    encoding: Encoding
    keep: np.ndarray | None
    total: int

    def fill(
        self,
        values: np.ndarray,
        items: list[Item],
        widths: list[int],
        *,
        start: float,
        end: float,
    ) -> None:
        firsts = dict(zip([i.column for i in items], np.cumsum([0, *widths[:-1]]), strict=True))
        batches = batched(items, scan_width(self.step))
        share = (end - start) / len(batches)
        for n, batch in enumerate(batches):
            exprs = [self._fetched(item) for item in batch]
            sql = f"SELECT {', '.join(exprs)} FROM {self.src}"
            at = dst = 0
            message = "reading the design matrix"
            for block in _stream(
                self.con, self.step, sql, message, start + n * share, share, self.total
            ):
                length = block.num_rows
                chosen = None if self.keep is None else self.keep[at : at + length]
                count = length if chosen is None else int(np.count_nonzero(chosen))
                for j, item in enumerate(batch):
                    column = block.column(j)
                    x = np.frombuffer(
                        column.buffers()[1],
                        dtype=np.float64,
                        count=length,
                        offset=column.offset * 8,
                    )
                    if chosen is not None:
                        x = x[chosen]
                    first = int(firsts[item.column])
                    if item.kind == "categorical" and self.encoding == "onehot":
                        values[np.arange(dst, dst + count), first + x.astype(np.intp)] = 1.0
                    else:
                        values[dst : dst + count, first] = x
                at += length
                dst += count

    def _fetched(self, item: Item) -> str:
        """SQL for an item's matrix value: a DOUBLE; a null is the fill value, or 0 in a row
        that is dropped."""
        duck_type = self.types[item.column]
        fill = self.fill_values.get(item.column)
        if item.kind != "categorical":
            return f"coalesce({_number(item, duck_type)}, {literal(float(fill or 0))})"
        # Text to ENUM is a hash lookup; the levels are the column's own text forms.
        levels = self.stats[item.column].levels
        enum = "ENUM(" + ", ".join(literal(level) for level in levels) + ")"
        text = f"CAST({value_expr(item.column, duck_type)} AS VARCHAR)"
        code = f"CAST(enum_code(CAST({text} AS {enum})) AS DOUBLE)"
        default = levels.index(fill) if fill is not None else 0
        return f"coalesce({code}, {literal(float(default))})"


def _drop_absent_levels(
    values: np.ndarray, items: list[Item], levels: dict[str, list[str]], encoding: Encoding
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Leave out the levels no kept row holds (levels come from every row, and dropped rows
    may have held some): codes renumbered, one-hot columns removed in place."""
    spans, at = [], 0
    for item in items:
        width = _width(item, levels, encoding)
        spans.append(slice(at, at + width))
        at += width
    present: dict[str, np.ndarray] = {}
    for item, span in zip(items, spans, strict=True):
        if item.kind != "categorical":
            continue
        if encoding == "codes":
            codes = values[:, span.start].astype(np.intp)
            counts = np.bincount(codes, minlength=len(levels[item.column]))
        else:
            counts = values[:, span].sum(axis=0)
        if not np.all(counts > 0):
            present[item.column] = counts > 0
    if not present:
        return values, levels
    kept_levels = dict(levels)
    for column, mask in present.items():
        kept_levels[column] = [level for level, p in zip(levels[column], mask, strict=True) if p]
    if encoding == "codes":
        for item, span in zip(items, spans, strict=True):
            if item.column in present:
                renumber = np.cumsum(present[item.column]) - 1
                values[:, span.start] = renumber[values[:, span.start].astype(np.intp)]
        return values, kept_levels
    columns = np.ones(values.shape[1], dtype=np.bool_)
    for item, span in zip(items, spans, strict=True):
        if item.column in present:
            columns[span] = present[item.column]
    # Rows compacted front to back within the same buffer: a row's new place never passes
    # the unread rows after it, and each block is copied out before it is written.
    rows, width = values.shape[0], int(np.count_nonzero(columns))
    flat = values.reshape(-1)
    for first in range(0, rows, FETCH_ROWS):
        last = min(rows, first + FETCH_ROWS)
        block = values[first:last][:, columns]
        flat[first * width : last * width] = block.reshape(-1)
    return flat[: rows * width].reshape(rows, width), kept_levels


def _stream(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    sql: str,
    message: str,
    start: float,
    share: float,
    total: int,
) -> Iterator[pa.RecordBatch]:
    """The query's record batches in order, reporting progress (and so a cancel) after each."""
    reader = con.sql(sql).to_arrow_reader(FETCH_ROWS)
    rows = 0
    try:
        for block in reader:
            if block.num_rows:
                yield block
            rows += block.num_rows
            step.report(start + share * min(1.0, rows / max(1, total)), message)
    finally:
        reader.close()
