"""What ingest and the format readers share: limits, result types, failed rows, SQL helpers.

A module of its own so that ingest can import the readers and the readers these helpers
without either importing the other.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.domain.records import ColumnInfo

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
    """Streams failed rows, added in line order, into a Parquet file created on the first row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.first: tuple[int, str] | None = None
        self._rows: list[tuple[int, str, str]] = []
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    def add(
        self, line_number: int, raw_text: str, reason: str, total_bytes: int | None = None
    ) -> None:
        """Record one failed row; `total_bytes` is the row's size when raw_text is partial."""
        if self.first is None:
            self.first = (line_number, reason)
        self._rows.append((line_number, truncate_raw(raw_text, total_bytes), reason))
        self.count += 1
        if len(self._rows) >= 10_000:
            self._flush()

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
            self._closed = True
        return self.path if self.count else None


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    out: Path,
    columns: list[tuple[str, str]] | None = None,
    row_cap: int | None = None,
) -> list[tuple[str, str]]:
    """COPY a relation to the Parquet copy with unique, non-empty column names; with `row_cap`,
    its first rows only (the read stops there)."""
    if columns is None:
        columns = describe(con, relation)
    names = dedupe_column_names([name for name, _ in columns])
    select = ", ".join(
        # A column DuckDB typed "NULL" (JSON key that is always null) becomes a string.
        f"{ident(old)}::VARCHAR AS {ident(new)}"
        if kind == '"NULL"'
        else f"{ident(old)} AS {ident(new)}"
        for (old, kind), new in zip(columns, names, strict=True)
    )
    limit = "" if row_cap is None else f" LIMIT {int(row_cap)}"
    con.execute(
        f"COPY (SELECT {select} FROM {relation}{limit}) TO {lit(out)} ({PARQUET_COPY_OPTIONS})"
    )
    return columns


def describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    """(name, DuckDB type) of each column of a relation."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return [(row[0], row[1]) for row in rows]


def dedupe_column_names(names: list[str]) -> list[str]:
    """The names renamed where needed to be non-empty (columnN) and unique ignoring case (a
    repeat gets _1, _2, ...), since DuckDB identifiers are case-insensitive. A NUL byte is
    written as \\x00, as in failed rows: PostgreSQL cannot store it."""
    seen: set[str] = set()
    result = []
    for i, name in enumerate(names):
        name = name.replace("\x00", "\\x00")
        base = name if name.strip() else f"column{i}"
        candidate, n = base, 1
        while candidate.lower() in seen:
            candidate, n = f"{base}_{n}", n + 1
        seen.add(candidate.lower())
        result.append(candidate)
    return result
