"""Dataset ingest: validate an uploaded file and convert it to a typed Parquet copy.

Pure: a local file in, a Parquet copy plus a summary out (no database, storage or
network). One fresh DuckDB connection per call does the parsing and writing. The
format specifics live in csv_reader, json_reader and parquet_reader (which also reads
the summary back from the copy); this module holds the entry point and what they share.

Outcomes: a file with nothing usable raises DatasetUnusable (empty, not UTF-8, not
Parquet, broken JSON array, no parsable row, ...); otherwise bad rows become failed
rows (physical 1-based line number, raw text capped at 64 KiB, reason) and the good
rows land in the copy.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.domain.records import ColumnInfo, DatasetFormat

PREVIEW_ROWS = 100
PREVIEW_TEXT_CHARS = 1000  # long strings are cut in the preview only, never in the copy
MAX_ROW_BYTES = 16 * 1024 * 1024  # longest accepted row (CSV line / JSON object)
RAW_TEXT_LIMIT = 64 * 1024  # bytes of a failed row's raw text that are kept
CHUNK_BYTES = 1024 * 1024
BOM = codecs.BOM_UTF8
_ERROR_PREFIX = re.compile(r"^[A-Za-z ]*Error: ")

# LZ4: every job step decodes the copy again; it decodes ~35% faster than zstd for a copy
# ~50% bigger (5M rows, 10 columns: 221 MiB against 148 MiB). Row groups of 61,440 rows
# (half DuckDB's default): an ordered CSV COPY holds a few row groups of text at once, so a
# job's 5M-row CSV then peaks ~70 MB lower at the same speed and fits a 192 MiB DuckDB limit,
# where 122,880-row groups run out of memory.
PARQUET_COPY_OPTIONS = "FORMAT parquet, COMPRESSION lz4, ROW_GROUP_SIZE 61440"
MEMORY_LIMIT = "1GB"  # DuckDB's, unless the caller (a worker, from its budget) gives one

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


def ingest(
    source: Path,
    fmt: DatasetFormat,
    parquet_out: Path,
    workdir: Path,
    *,
    memory_limit: str = MEMORY_LIMIT,
) -> IngestResult:
    """Validate `source`, write its typed Parquet copy to `parquet_out`, summarise it.

    `memory_limit` is DuckDB's (it spills to `workdir` beyond it).
    """
    # Imported here because the readers import the shared helpers from this module.
    from services.processing.datasets import csv_reader, json_reader, parquet_reader

    fmt = DatasetFormat(fmt)
    workdir.mkdir(parents=True, exist_ok=True)
    parquet_out.parent.mkdir(parents=True, exist_ok=True)
    if source.stat().st_size == 0:
        raise DatasetUnusable("file is empty")
    failed = FailedRowsWriter(workdir / "failed_rows.parquet")
    con = connect(workdir, memory_limit)
    try:
        if fmt is DatasetFormat.parquet:
            parquet_reader.convert(con, source, parquet_out)
        else:
            scan = scan_text(source)
            if fmt is DatasetFormat.csv:
                csv_reader.convert(con, source, scan, parquet_out, failed)
            else:
                json_reader.convert(con, source, fmt, scan, parquet_out, workdir, failed)
        failed_path = failed.close()
        result = parquet_reader.summarize(con, parquet_out, failed.count, failed_path)
        if result.row_count == 0 and failed.first is not None:
            line, reason = failed.first
            raise DatasetUnusable(f"no row could be parsed; first error at line {line}: {reason}")
        return result
    finally:
        failed.close()
        con.close()


def iter_failed_rows(path: Path, batch_size: int = 1000) -> Iterator[list[tuple[int, str, str]]]:
    """Yield batches of (line_number, raw_text, reason) from a failed-rows file, in line order."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        yield list(
            zip(
                batch.column("line_number").to_pylist(),
                batch.column("raw_text").to_pylist(),
                batch.column("reason").to_pylist(),
                strict=True,
            )
        )


def connect(workdir: Path, memory_limit: str = MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
    """A fresh DuckDB connection with the ingest limits (reject tables are per connection)."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit={lit(memory_limit)}")
    con.execute(f"SET temp_directory={lit(workdir / 'duckdb_tmp')}")
    con.execute("SET TimeZone='UTC'")
    con.execute("SET enable_progress_bar=false")  # it would write to the worker's stdout
    return con


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


def scan_text(path: Path) -> TextScan:
    """Check UTF-8 and emptiness in one streaming pass; raise DatasetUnusable if either fails.

    Newlines are not counted on the way (that alone took a third of the pass): the few line
    numbers reported (first non-blank line, first overlong line, first invalid byte) are
    counted afterwards, up to their offset.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = run = line_start = longest = 0  # run: bytes of the unfinished line
    nl = b"\n"
    first_char = b""
    first_line = first_offset = 0
    long_line: tuple[int, int] | None = None
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            if offset == 0 and b"\n" not in chunk and b"\r" in chunk:
                nl = b"\r"
            pending = decoder.getstate()[0]
            if pending or not chunk.isascii():
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    base = offset - len(pending)
                    newlines = _count_lines(path, base, nl)
                    raise _not_utf8(exc, base, nl, newlines, line_start) from None
            if not first_char:
                skip = 3 if offset == 0 and chunk.startswith(BOM) else 0
                text = chunk[skip:].lstrip()
                if text:
                    first_char, at = text[:1], len(chunk) - len(text)
                    first_line = _count_lines(path, offset, nl) + chunk.count(nl, 0, at) + 1
                    before = chunk.rfind(nl, 0, at)
                    first_offset = offset + before + 1 if before >= 0 else line_start
            last = chunk.rfind(nl)
            if last >= 0:
                length = run + chunk.find(nl)
                longest = max(longest, length)
                if long_line is None and length > MAX_ROW_BYTES:
                    long_line = (_count_lines(path, offset, nl) + 1, length)
                run = len(chunk) - last - 1
                line_start = offset + last + 1
            else:
                run += len(chunk)
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            base = offset - len(exc.object)
            newlines = _count_lines(path, base, nl)
            raise _not_utf8(exc, base, nl, newlines, line_start) from None
    if not first_char:
        raise DatasetUnusable("file is empty")
    if long_line is None and run > MAX_ROW_BYTES:
        long_line = (_count_lines(path, offset, nl) + 1, run)
    longest = max(longest, run)
    return TextScan(offset, nl, first_char, first_line, first_offset, longest, long_line)


def _count_lines(path: Path, end: int, nl: bytes) -> int:
    """How many `nl` the file holds before byte offset `end`."""
    count = 0
    with path.open("rb") as f:
        while end > 0 and (chunk := f.read(min(CHUNK_BYTES, end))):
            count += chunk.count(nl)
            end -= len(chunk)
    return count


def _not_utf8(
    exc: UnicodeDecodeError, base: int, nl: bytes, newlines: int, line_start: int
) -> DatasetUnusable:
    """Describe the first invalid UTF-8 byte; `base` is the file offset of exc.object[0]."""
    before = exc.object[: exc.start]
    last = before.rfind(nl)
    if last >= 0:
        line_start = base + last + 1
    bad_offset = base + exc.start
    line = newlines + before.count(nl) + 1
    return DatasetUnusable(
        f"file is not valid UTF-8: invalid byte 0x{exc.object[exc.start]:02x} at line "
        f"{line}, column {bad_offset - line_start + 1} "
        f"(byte offset {bad_offset}); re-encode the file as UTF-8 (for example from "
        "Latin-1 or Windows-1252) and upload it again"
    )


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    out: Path,
    columns: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """COPY a relation to the Parquet copy with unique, non-empty column names."""
    if columns is None:
        columns = describe(con, relation)
    names = unique_names([name for name, _ in columns])
    select = ", ".join(
        # A column DuckDB typed "NULL" (JSON key that is always null) becomes a string.
        f"{ident(old)}::VARCHAR AS {ident(new)}"
        if kind == '"NULL"'
        else f"{ident(old)} AS {ident(new)}"
        for (old, kind), new in zip(columns, names, strict=True)
    )
    con.execute(f"COPY (SELECT {select} FROM {relation}) TO {lit(out)} ({PARQUET_COPY_OPTIONS})")
    return columns


def describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    """(name, DuckDB type) of each column of a relation."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return [(row[0], row[1]) for row in rows]


def unique_names(names: list[str]) -> list[str]:
    """Non-empty names, unique ignoring case (DuckDB identifiers are case-insensitive)."""
    seen: set[str] = set()
    result = []
    for i, name in enumerate(names):
        base = name if name.strip() else f"column{i}"
        candidate, n = base, 1
        while candidate.lower() in seen:
            candidate, n = f"{base}_{n}", n + 1
        seen.add(candidate.lower())
        result.append(candidate)
    return result
