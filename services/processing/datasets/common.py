"""What ingest and the format readers share: limits, result types, failed rows, SQL helpers.

A module of its own so that ingest can import the readers and the readers these helpers
without either importing the other.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.domain.records import ColumnInfo
from services.processing.datasets.parquet_patch import group_sizes, merge, read_footer

PREVIEW_ROWS = 100
PREVIEW_TEXT_CHARS = 1000  # long strings are cut in the preview only, never in the copy
MAX_ROW_BYTES = 16 * 1024 * 1024  # longest accepted row (CSV line / JSON object)
RAW_TEXT_LIMIT = 64 * 1024  # bytes of a failed row's raw text that are kept
CHUNK_BYTES = 1024 * 1024
BOM = codecs.BOM_UTF8
_ERROR_PREFIX = re.compile(r"^[A-Za-z ]*Error: ")

# LZ4: every job step decodes the copy again, and LZ4 decodes faster than zstd for a somewhat
# bigger file. Row groups of half DuckDB's default: an ordered CSV COPY of a job holds a few
# row groups of text at once, and with the default ones a job's CSV output ran out of memory
# within a worker's DuckDB limit. Figures in docs/decisions.md ("The Parquet copy").
PARQUET_COPY_OPTIONS = "FORMAT parquet, COMPRESSION lz4, ROW_GROUP_SIZE 61440"

_FAILED_SCHEMA = pa.schema(
    [("line_number", pa.int64()), ("raw_text", pa.string()), ("reason", pa.string())]
)


class DatasetUnusable(Exception):
    """Nothing usable in the file; str(exc) says what and where (line, byte offset, column)."""


@dataclass(frozen=True)
class IngestResult:
    row_count: int  # good rows, as in the Parquet copy
    columns: list[ColumnInfo]  # name, friendly type, null count
    failed_row_count: int
    failed_rows_path: Path | None  # Parquet: line_number, raw_text, reason; None if none failed
    preview: list[dict[str, Any]]  # first PREVIEW_ROWS good rows, JSON-safe values


@dataclass(frozen=True)
class TextScan:
    """What one streaming pass over a text file learned about it."""

    size: int
    newline: bytes  # b"\n" (also for CRLF), or b"\r" for old Mac files without any "\n"
    first_char: bytes  # first non-whitespace byte after any BOM
    first_line: int  # 1-based line of first_char: the lines before it are blank
    first_offset: int  # byte offset where that line starts
    longest_line: int  # bytes; exact from CHUNK_BYTES up, any value below means "shorter"
    long_line: tuple[int, int] | None  # (line, bytes) of the first line over MAX_ROW_BYTES
    newlines: int = 0  # `newline` bytes in the file
    delimiter: bytes = b""  # the likeliest CSV delimiter of the first line (CSV scans only)
    delimiters: int = 0  # `delimiter` bytes in the file


def lit(value: object) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def first_line(exc: BaseException, source: Path | None = None) -> str:
    """An error's first line, without "Invalid Input Error: " and with the file's bare name."""
    text = str(exc).strip()
    if source is not None:
        text = text.replace(str(source), source.name)
    return _ERROR_PREFIX.sub("", text.splitlines()[0]) if text else type(exc).__name__


def truncate_raw(text: str, total_bytes: int | None = None) -> str:
    """Cap a failed row's raw text at RAW_TEXT_LIMIT bytes, with a marker giving its size."""
    if total_bytes is None and len(text) <= RAW_TEXT_LIMIT // 4:
        return text
    data = text.encode()
    total = max(total_bytes or 0, len(data))
    if total <= RAW_TEXT_LIMIT:
        return text
    return data[:RAW_TEXT_LIMIT].decode("utf-8", "ignore") + f"… [truncated, {total} bytes]"


class FailedRowsWriter:
    """Streams failed rows into a Parquet file created on the first row, in line order: rows
    added out of order (a later check finds more) are sorted when the file is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.first: tuple[int, str] | None = None  # the lowest line's
        self._rows: list[tuple[int, str, str]] = []
        self._writer: pq.ParquetWriter | None = None
        self._closed = False
        self._last = 0
        self._sorted = True

    def add(
        self, line_number: int, raw_text: str, reason: str, total_bytes: int | None = None
    ) -> None:
        """Record one failed row; `total_bytes` is the row's size when raw_text is partial."""
        if self.first is None or line_number < self.first[0]:
            self.first = (line_number, reason)
        self._sorted = self._sorted and line_number >= self._last
        self._last = max(self._last, line_number)
        self._rows.append((line_number, truncate_raw(raw_text, total_bytes), reason))
        self.count += 1
        if len(self._rows) >= 10_000:
            self._flush()

    def reset(self) -> None:
        """Forget every row added (the file is read again)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.path.unlink(missing_ok=True)
        self.count, self.first, self._rows, self._last, self._sorted = 0, None, [], 0, True

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, _FAILED_SCHEMA, compression="zstd")
        lines, raws, reasons = zip(*self._rows, strict=True)
        self._writer.write_table(
            pa.table([list(lines), list(raws), list(reasons)], schema=_FAILED_SCHEMA)
        )
        self._rows.clear()

    def close(self) -> Path | None:
        """Finish the file; its path, or None when no row failed."""
        if not self._closed:
            self._flush()
            if self._writer is not None:
                self._writer.close()
                if not self._sorted:
                    table = pq.read_table(self.path).sort_by("line_number")
                    pq.write_table(table, self.path, compression="zstd")
            self._closed = True
        return self.path if self.count else None


LINE_COLUMN = "__line__"  # the copy's line-number column: never one of the dataset's columns
# Footer key of the copy holding the dataset's column names in order (JSON): the names the
# copy's own columns stand for, which differ where two names differ only in case.
NAMES_KEY = "assay.columns"
STAGE = "ingest_rows"  # the staging table a text file's rows are read into first
_LINES = "ingest_lines"  # line numbers handed to DuckDB for a POSITIONAL JOIN


@dataclass(eq=False)
class Column:
    """One column on its way to the copy: where it is staged, and what the dataset calls it."""

    source: str  # its name in the staged relation (DuckDB's)
    kind: str  # its DuckDB type there
    name: str = ""  # the dataset's name for it
    target: str | None = None  # the type written to the copy, when it differs from `kind`
    # SQL turning the staged text into `target` ({} is the value); default CAST
    parse: str | None = None
    null_tokens: tuple[str, ...] = ()  # text values that become NULL on the way to `target`
    intended: str | None = None  # the type the sniffer gave the column with null tokens set aside
    intended_parse: str | None = None  # how its text reads as that type ({} is the value)
    dropped: bool = False  # left out of the copy (an unnamed column after a trailing delimiter)
    stored: str = ""  # its name in the copy (select_list)


def columns_of(described: list[tuple[str, str]], names: list[str] | None = None) -> list[Column]:
    """The columns of a relation, named `names` (the source's own, when DuckDB renamed them)
    made unique and non-empty."""
    raw = names if names is not None and len(names) == len(described) else None
    shown = dedupe_column_names(raw or [name for name, _ in described])
    return [
        Column(source=source, kind=kind, name=name)
        for (source, kind), name in zip(described, shown, strict=True)
    ]


def stage(
    con: duckdb.DuckDBPyConnection, relation: str, row_cap: int | None = None
) -> list[tuple[str, str]]:
    """Read a relation into the staging table (its row ids are then the rows' order, which a
    parallel read keeps); with `row_cap`, its first rows only (the read stops there)."""
    limit = "" if row_cap is None else f" LIMIT {int(row_cap)}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {STAGE} AS SELECT * FROM {relation}{limit}")
    return describe(con, STAGE)


def staged_rows(con: duckdb.DuckDBPyConnection) -> int:
    """Rows in the staging table."""
    found = con.execute(f"SELECT count(*) FROM {STAGE}").fetchone()
    assert found is not None  # an aggregate without GROUP BY returns one row
    return int(found[0])


@dataclass(frozen=True)
class Lines:
    """The source line of each staged row, by row id: `base` + row id + `steps`, where a step
    (row id, n) adds n from that row on; or `dense`, one line per row in order (batches); or
    unknown (NULL) when `base` is None."""

    base: int | None
    steps: tuple[tuple[int, int], ...] = ()
    dense: Callable[[], Iterator[np.ndarray]] | None = None
    index: str = "rowid"  # the column of the staged relation that numbers its rows from 0


MAX_STEPS = 64  # more steps than this go to DuckDB as a column of lines instead of one expression


def select_list(columns: list[Column], value: Callable[[Column], str]) -> list[str]:
    """The SELECT items writing the kept columns to the copy: each under a name DuckDB can tell
    apart from the others (Column.stored, see storage_names), cast where needed. `value` gives
    a column's value in the relation read."""
    kept = [c for c in columns if not c.dropped]
    for c, name in zip(kept, storage_names([c.name for c in kept]), strict=True):
        c.stored = name
    return [f"{_value(c, value(c))} AS {ident(c.stored)}" for c in kept]


def copy_options(columns: list[Column]) -> str:
    """The COPY options of the copy: its Parquet layout, and the dataset's column names in its
    footer (NAMES_KEY)."""
    names = json.dumps([c.name for c in columns if not c.dropped])
    return f"{PARQUET_COPY_OPTIONS}, KV_METADATA {{{lit(NAMES_KEY)}: {lit(names)}}}"


def write_copy(
    con: duckdb.DuckDBPyConnection,
    columns: list[Column],
    out: Path,
    lines: Lines,
    relation: str = STAGE,
) -> None:
    """COPY the staged rows to the Parquet copy, and drop them: the kept columns, then
    LINE_COLUMN (see select_list and copy_options)."""
    select = select_list(columns, staged_value)
    # Another relation (a Parquet file read directly) goes by the staging table's name.
    source = STAGE if relation == STAGE else f"{relation} AS {STAGE}"
    if lines.dense is not None:
        batches = (
            pa.RecordBatch.from_arrays([int64_array(chunk)], ["line"]) for chunk in lines.dense()
        )
        reader = pa.RecordBatchReader.from_batches(pa.schema([("line", pa.int64())]), batches)
        con.complete()  # an aggregate's result still open would refuse the registration
        con.register(_LINES, reader)
        source = f"{source} POSITIONAL JOIN {_LINES}"
        line = f"{_LINES}.line"
    elif lines.base is None:
        line = "NULL::BIGINT"
    else:
        row = f"{STAGE}.{lines.index}"
        line = f"{row} + {int(lines.base)}" + "".join(
            f" + {int(n)} * ({row} >= {int(at)})::BIGINT" for at, n in lines.steps
        )
    select.append(f"({line})::BIGINT AS {ident(LINE_COLUMN)}")
    try:
        con.execute(
            f"COPY (SELECT {', '.join(select)} FROM {source}) TO {lit(out)} "
            f"({copy_options(columns)})"
        )
    finally:
        if lines.dense is not None:
            con.unregister(_LINES)
        con.execute(f"DROP TABLE IF EXISTS {STAGE}")


def join_lines(out: Path, lines: Lines, retyped: list[Column], workdir: Path) -> None:
    """Add LINE_COLUMN to a copy written straight from its source, and make the `retyped`
    columns (text without a value) DOUBLE, all null: written to a side file with the copy's
    row groups and joined to it by parquet_patch, the copy's other columns left as written."""
    footer = read_footer(out, raw=True)
    sizes = group_sizes(footer[0])
    schema = pa.schema([*((c.stored, pa.float64()) for c in retyped), (LINE_COLUMN, pa.int64())])
    side = workdir / "joined_columns.parquet"
    try:
        with pq.ParquetWriter(
            side,
            schema,
            compression="lz4",
            use_dictionary=False,
            # Line numbers mostly go up by one: a few bytes per row group this way.
            column_encoding={LINE_COLUMN: "DELTA_BINARY_PACKED"},
            data_page_version="1.0",
        ) as writer:
            for n, values in zip(sizes, line_values(lines, sizes), strict=True):
                arrays = [pa.nulls(n, pa.float64()) for _ in retyped]
                arrays.append(pa.nulls(n, pa.int64()) if values is None else int64_array(values))
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=n)
        merge(out, side, footer=footer)
    finally:
        side.unlink(missing_ok=True)


def line_values(lines: Lines, sizes: list[int]) -> Iterator[np.ndarray | None]:
    """The line numbers of each row group of `sizes` rows (None: unknown)."""
    if lines.base is None:
        yield from (None for _ in sizes)
        return
    if lines.dense is not None:
        pending = np.zeros(0, dtype=np.int64)
        chunks = lines.dense()
        for n in sizes:
            while len(pending) < n:
                pending = np.concatenate([pending, next(chunks)])
            yield pending[:n]
            pending = pending[n:]
        return
    at = np.array([a for a, _ in lines.steps], dtype=np.int64)
    added = np.cumsum([0] + [n for _, n in lines.steps], dtype=np.int64)
    start = 0
    for n in sizes:
        values = np.arange(lines.base + start, lines.base + start + n, dtype=np.int64)
        first, last = np.searchsorted(at, [start, start + n], side="right")
        values += added[first]  # the steps at or before the group's first row
        for i in range(first, last):  # and those inside it, from their row on
            values[at[i] - start :] += added[i + 1] - added[i]
        yield values
        start += n


def int64_array(values: np.ndarray) -> pa.Array:
    """An Arrow int64 array over a numpy array (pa.array would import pandas to look at it)."""
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def staged_value(column: Column) -> str:
    """A column's staged value in SQL."""
    return f"{STAGE}.{ident(column.source)}"


def _value(column: Column, expr: str) -> str:
    tokens = [t for t in column.null_tokens if t]
    if tokens:
        listed = ", ".join(lit(t) for t in tokens)
        expr = f"CASE WHEN {expr} IN ({listed}) THEN NULL ELSE {expr} END"
    target = column.target
    if target is None and column.kind == '"NULL"':
        target = "VARCHAR"  # a JSON key that is always null, in a dataset without rows
    if target is None:
        return expr
    return column.parse.format(expr) if column.parse else f"CAST({expr} AS {target})"


def describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    """(name, DuckDB type) of each column of a relation."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return [(row[0], row[1]) for row in rows]


def dedupe_column_names(names: list[str]) -> list[str]:
    """The names renamed where needed to be non-empty (columnN) and unique: a repeat of a name
    gets _1, _2, ...; names that differ only in case are different names and stay as they are.
    LINE_COLUMN is taken (a source column of that name becomes __line___1). A NUL byte is
    written as \\x00, as in failed rows: PostgreSQL cannot store it."""
    return _unique(names, lambda name: name, reserved={LINE_COLUMN})


def storage_names(names: list[str]) -> list[str]:
    """The column names of the copy itself: `names` made unique ignoring case, since DuckDB
    identifiers are (it reads a Parquet file's columns "a" and "A" as "a" and "A_1"). The same
    as `names` unless two differ only in case; the dataset's columns keep `names`, and a
    column's place in the copy is its place among them."""
    return _unique(names, str.lower, reserved={LINE_COLUMN})


def _unique(names: list[str], key: Callable[[str], str], reserved: set[str]) -> list[str]:
    seen = {key(name) for name in reserved}
    result = []
    for i, name in enumerate(names):
        name = name.replace("\x00", "\\x00")
        base = name if name.strip() else f"column{i}"
        candidate, n = base, 1
        while key(candidate) in seen:
            candidate, n = f"{base}_{n}", n + 1
        seen.add(key(candidate))
        result.append(candidate)
    return result
