"""CSV to Parquet with DuckDB's sniffer and read_csv(store_rejects=true).

DuckDB (2.0) behaviour this module relies on, each pinned by a test in
tests/unit/test_ingest_csv.py:

- reject_errors.line counts records, not physical lines: a quoted field with a line
  break earlier in the file shifts it. line_byte_position is the 1-based byte offset
  (BOM included) where csv_line starts, and csv_line may begin with the line breaks
  before the record (the "\\n" of a CRLF, blank lines). The physical line number is
  computed from that offset plus the leading breaks, checked against the file bytes.
- csv_line keeps only the first 10,000 bytes of a row; longer rows are re-read from the
  file for the failed row's raw text (kept up to 64 KiB, with the full size).
- One reject row per problem: a row with two extra fields gives two TOO MANY COLUMNS
  rows ("Found: 4", "Found: 5"), two bad casts give two CAST rows; they are merged, and
  CAST errors that come with a wrong field count (shifted fields) are left out.
  column_idx is not a reliable position (1-based for CAST, 0-based for MISSING COLUMNS),
  so column_name is used.
- The sniffer chooses "no quoting" when its sample holds no quote or a broken one, so a
  correctly quoted "a, b" later on splits into two fields. quote='"' is therefore
  forced. When that sniff fails while the unforced one works, the sample has a broken
  quote: DatasetUnusable names its line. Broken quotes after the sample become failed
  rows (DuckDB reads up to the next quote, so the failed row may span several lines).
- Types come from the whole file when it is small (sample_size=-1 on a big file takes much
  longer than a sample); in larger files a value that does not fit the sampled type makes
  its row a failed row.
- The BOM is stripped; duplicate header names get _1, _2 suffixes, empty ones columnN.
- With blank lines before the header DuckDB takes the names from the header but reads
  it again as a data row (a CAST failure), so skip= is set to the number of blank lines.
- Old Mac files (CR only) are read by DuckDB; line numbers then count "\r".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

import duckdb

from services.processing.datasets.common import (
    CHUNK_BYTES,
    MAX_ROW_BYTES,
    RAW_TEXT_LIMIT,
    DatasetUnusable,
    FailedRowsWriter,
    TextScan,
    copy_to_parquet,
    dedupe_column_names,
    describe,
    first_line,
    lit,
)
from services.processing.datasets.parquet_reader import friendly_type

SAMPLE_ROWS = 20480
MAX_HEADER_BYTES = 1024 * 1024
DUCKDB_TEXT_CAP = 10_000  # reject_errors.csv_line holds at most this many bytes
FULL_SNIFF_BYTES = 32 * 1024 * 1024
MAX_COLUMNS = 10_000  # DuckDB's sniffer takes time in proportion to the columns
QUOTE_REASON = "unterminated or misplaced quote (a quoted field must end with a quote"
QUOTE_REASON += " followed by a delimiter or the end of the line)"

_BASE = "header=true, comment='', store_rejects=true"
# DuckDB sizes its read buffers from max_line_size, so raising it to 16 MiB multiplies its
# memory: it is raised only for files with a line over CHUNK_BYTES, and with a buffer smaller
# than DuckDB would choose.
_LONG_LINES = f"max_line_size={MAX_ROW_BYTES}, buffer_size={2 * MAX_ROW_BYTES}"
_REJECTS = "rejects_table='ingest_errors', rejects_scan='ingest_scans'"
_FIELDS = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")
_CAST = re.compile(r"Could not convert string \"(.*)\" to '(.+?)'", re.S)
_STRUCTURAL = {"MISSING COLUMNS", "TOO MANY COLUMNS", "UNQUOTED VALUE", "LINE SIZE OVER MAXIMUM"}
_SIZE = re.compile(r"line size of (\d+) bytes exceeded\. Actual Size:\s*(\d+)")

Columns = list[tuple[str, str]]


def convert(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    scan: TextScan,
    parquet_out: Path,
    failed: FailedRowsWriter,
) -> None:
    """Write the good rows of a CSV file to `parquet_out` and the rejected ones to `failed`."""
    _check_header(source, scan)
    options, columns = _sniff(con, source, scan)
    relation = f"read_csv({lit(source)}, {options}, {_REJECTS})"
    try:
        copy_to_parquet(con, relation, parquet_out, columns)
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        raise DatasetUnusable(
            f"could not read the file as CSV: {first_line(exc, source)}"
        ) from None
    original = [name for name, _ in columns]
    renamed = dict(zip(original, dedupe_column_names(original), strict=True))
    _collect_rejects(con, source, scan.newline, renamed, failed)


def _check_header(source: Path, scan: TextScan) -> None:
    """Refuse headers the sniffer would choke on (its time grows with the column count)."""
    with source.open("rb") as f:
        f.seek(scan.first_offset)
        header = f.read(MAX_HEADER_BYTES + 1)
        end = header.find(scan.newline)
        length = end if end >= 0 else len(header)
        while end < 0 and (chunk := f.read(CHUNK_BYTES)):
            end = chunk.find(scan.newline)
            length += end if end >= 0 else len(chunk)
    if length > MAX_HEADER_BYTES:
        raise DatasetUnusable(
            f"line {scan.first_line} is {length} bytes long; a CSV header row must be under "
            "1 MiB (is it really a header?)"
        )
    fields = 1 + max(header[:length].count(d) for d in (b",", b";", b"\t", b"|"))
    if fields > MAX_COLUMNS:
        raise DatasetUnusable(
            f"line {scan.first_line} (the header) has {fields} fields; at most {MAX_COLUMNS} "
            "columns are supported"
        )


def _sniff(con: duckdb.DuckDBPyConnection, source: Path, scan: TextScan) -> tuple[str, Columns]:
    """read_csv options and the columns they give; see the module docstring for the policy."""
    if scan.long_line and scan.long_line[0] <= SAMPLE_ROWS + scan.first_line:
        raise _too_long(scan.long_line)  # in the sample: sniffing fails, slowly
    full = scan.size <= FULL_SNIFF_BYTES and scan.long_line is None
    samples = (-1, SAMPLE_ROWS) if full else (SAMPLE_ROWS,)
    base = f"{_BASE}, skip={scan.first_line - 1}"  # blank lines before the header
    if scan.longest_line >= CHUNK_BYTES:
        base += f", {_LONG_LINES}"
    for sample in samples:
        options = f"{base}, sample_size={sample}, quote='\"'"
        quoted, error = _try_describe(con, source, options)
        if quoted is not None:
            break
    if quoted is not None and len(quoted) > 1:
        return options, quoted
    free_options = f"{base}, sample_size={SAMPLE_ROWS}"
    free, free_error = _try_describe(con, source, free_options)
    if free is None or (quoted is not None and len(free) <= len(quoted)):
        if quoted is not None:
            return options, quoted
        if scan.long_line:
            raise _too_long(scan.long_line)
        raise DatasetUnusable(f"could not detect the CSV layout: {error or free_error}")
    _raise_on_broken_quote(con, source, scan, free_options, len(free))
    return free_options, free


def _too_long(long_line: tuple[int, int]) -> DatasetUnusable:
    line, size = long_line
    return DatasetUnusable(f"line {line} is {size} bytes long; rows over 16 MiB are not supported")


def _try_describe(
    con: duckdb.DuckDBPyConnection, source: Path, options: str
) -> tuple[Columns | None, str | None]:
    try:
        return describe(con, f"read_csv({lit(source)}, {options})"), None
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        return None, first_line(exc, source)


def _raise_on_broken_quote(
    con: duckdb.DuckDBPyConnection, source: Path, scan: TextScan, free_options: str, n_columns: int
) -> None:
    """Raise DatasetUnusable naming the first row that standard CSV quoting cannot read."""
    row = con.execute(f"SELECT Delimiter FROM sniff_csv({lit(source)}, {free_options})").fetchone()
    if row is None or not row[0] or row[0] == "(empty)":
        return
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(n_columns))
    relation = (
        f"read_csv({lit(source)}, auto_detect=false, header=true, delim={lit(row[0])}, "
        f"skip={scan.first_line - 1}, "
        f"quote='\"', escape='\"', columns={{{columns}}}, max_line_size={MAX_ROW_BYTES}, "
        "store_rejects=true, rejects_table='quote_errors', rejects_scan='quote_scans')"
    )
    try:
        con.execute(f"SELECT count(*) FROM {relation}").fetchall()
    except duckdb.Error:
        return
    bad = con.execute(
        "SELECT line_byte_position, csv_line FROM quote_errors "
        "WHERE error_type = 'UNQUOTED VALUE' ORDER BY line_byte_position LIMIT 1"
    ).fetchone()
    if bad is None:
        return
    with source.open("rb") as f:
        line, _, text = _LineLocator(f, scan.newline).locate(bad[0], bad[1])
    raise DatasetUnusable(
        f"malformed quoting at line {line}: {QUOTE_REASON}; "
        f"the row starts {text.splitlines()[0][:80]!r}"
    )


def _collect_rejects(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    newline: bytes,
    renamed: dict[str, str],
    failed: FailedRowsWriter,
) -> None:
    """Turn DuckDB's reject rows into failed rows, one per record, in file order."""
    cursor = con.execute(
        "SELECT min(line_byte_position), any_value(csv_line), "
        "list(error_type::VARCHAR ORDER BY column_idx), "
        "list(error_message ORDER BY column_idx), list(column_name ORDER BY column_idx) "
        "FROM ingest_errors GROUP BY scan_id, file_id, line ORDER BY 1"
    )
    with source.open("rb") as f:
        locator = _LineLocator(f, newline)
        while batch := cursor.fetchmany(10_000):
            for position, csv_line, kinds, messages, columns in batch:
                csv_line = csv_line or ""
                line, start, text = locator.locate(position, csv_line)
                cut = len(csv_line.encode()) >= DUCKDB_TEXT_CAP
                raw, size = locator.raw_text(start, text) if cut else (text, None)
                reason, total = _reason(kinds, messages, columns, renamed)
                failed.add(line, raw, reason, size or total)


def _reason(
    kinds: list[str], messages: list[str], columns: list[str | None], renamed: dict[str, str]
) -> tuple[str, int | None]:
    """A human reason for one rejected record, and its full size when DuckDB cut it."""
    parts: list[str] = []
    total: int | None = None
    broken = not _STRUCTURAL.isdisjoint(kinds)
    for kind, message, column in zip(kinds, messages, columns, strict=True):
        fields = _FIELDS.search(message or "")
        if kind in ("MISSING COLUMNS", "TOO MANY COLUMNS") and fields:
            expected = int(fields[1])
            # One reject per missing/extra field: the real count is the extreme one.
            founds = [int(m[2]) for m in map(_FIELDS.search, messages) if m is not None]
            found = min(founds) if kind == "MISSING COLUMNS" else max(founds)
            parts.append(f"expected {expected} fields, found {found}")
        elif kind == "CAST" and broken:
            continue  # a consequence: fields are shifted or cut
        elif kind == "CAST" and (cast := _CAST.search(message or "")):
            name = renamed.get(column or "", column)
            value = cast[1] if len(cast[1]) <= 100 else cast[1][:100] + "…"
            parts.append(f'column "{name}": cannot convert "{value}" to {friendly_type(cast[2])}')
        elif kind == "UNQUOTED VALUE":
            parts.append(QUOTE_REASON)
        elif kind == "LINE SIZE OVER MAXIMUM" and (size := _SIZE.search(message or "")):
            total = int(size[2])
            parts.append(f"row is {total} bytes long; the limit is {size[1]} bytes")
        elif kind == "INVALID ENCODING":
            parts.append("invalid UTF-8")
        else:
            parts.append(message or kind)
    return "; ".join(dict.fromkeys(parts)), total


class _LineLocator:
    """Maps reject byte positions, in ascending order, to physical lines in one forward read."""

    def __init__(self, f: BinaryIO, newline: bytes) -> None:
        self._f = f
        self._nl = newline
        self._pos = 0
        self._newlines = 0

    def locate(self, position: int, csv_line: str) -> tuple[int, int, str]:
        """(1-based physical line, byte offset, text) of the record DuckDB reported."""
        text = csv_line.lstrip("\r\n")
        start = position - 1 + len(csv_line) - len(text)
        expected = text[:32].encode()
        for candidate in (start, start + 1, start - 1):  # in case the offset base changes
            self._f.seek(max(candidate, 0))
            if candidate >= 0 and self._f.read(len(expected)) == expected:
                start = candidate
                break
        start = max(start, 0)
        return self._line_at(start), start, text.rstrip("\r\n")

    def raw_text(self, start: int, text: str) -> tuple[str, int]:
        """Text and size of a row DuckDB cut: its start as DuckDB gave it, the rest of its line."""
        seen = len(text.encode())
        self._f.seek(start)
        kept = bytearray()
        total = 0
        while chunk := self._f.read(CHUNK_BYTES):
            end = chunk.find(self._nl, max(seen - total, 0))
            piece = chunk if end < 0 else chunk[:end]
            kept += piece[: max(RAW_TEXT_LIMIT + 4 - len(kept), 0)]
            total += len(piece)
            if end >= 0:
                break
        return kept.decode("utf-8", "ignore").rstrip("\r"), total

    def _line_at(self, offset: int) -> int:
        if offset < self._pos:
            self._pos = self._newlines = 0
        self._f.seek(self._pos)
        while self._pos < offset:
            chunk = self._f.read(min(CHUNK_BYTES, offset - self._pos))
            if not chunk:
                break
            self._newlines += chunk.count(self._nl)
            self._pos += len(chunk)
        return self._newlines + 1
