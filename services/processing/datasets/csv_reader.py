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
  rows. DuckDB reads an unterminated quoted field up to the next quote anywhere later in
  the file (past max_line_size it reports LINE SIZE OVER MAXIMUM too) and rejects all of it
  as one record: one missing quote could swallow the rest of the file. reject_errors'
  byte_position is where the failing quoted field starts. So when a quote reject runs past
  the line its quote opens on, the file is read again as segments (copies of byte ranges
  in the scratch folder, the header lines before each) cut after that line: the failed row
  ends there and the next segment starts at the next line. The segments are read by one
  COPY of a UNION ALL of read_csv calls, one per segment (each its own scan_id in the
  rejects, and the order kept); not by read_csv of a list of files, whose rejects were
  all lost once the list was longer than about twice DuckDB's threads. A record with a
  legitimately quoted line break is not cut; a broken quote that happens to pair with a
  later quote so that the record parses is indistinguishable from one and stays a row.
- Types come from the whole file when it is small (sample_size=-1 on a big file takes much
  longer than a sample); in larger files a value that does not fit the sampled type makes
  its row a failed row.
- The BOM is stripped; duplicate header names get _1, _2 suffixes, empty ones columnN.
- With blank lines before the header DuckDB takes the names from the header but reads
  it again as a data row (a CAST failure), so skip= is set to the number of blank lines.
- Old Mac files (CR only) are read by DuckDB; line numbers then count "\r".
- Mixed line endings (a CRLF header over LF rows, one LF row in a CRLF file, CR and LF
  rows) fail: "Error when sniffing file", or "The CSV Parser state machine reached an
  invalid state" when the mix comes late. strict_mode=false reads them, but also reads a
  row with too many fields, dropping the extra ones without a reject, so ingest instead
  reads such a file again from a copy with LF endings (ingest._convert_csv). A CR or LF
  inside a quoted field of a file that is otherwise of one kind reads fine, untouched.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from itertools import pairwise
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
UNCLOSED_REASON = "unterminated quote: the quoted field opened at line {line} never closes"
MAX_QUOTE_CUTS = 1000  # segments are files: DuckDB opens each one
MAX_SEGMENT_READS = 4  # a read of the segments can show further broken quotes to cut after

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


@dataclass(frozen=True)
class _Segment:
    """The bytes [start, end) of the file, as DuckDB reads them: from `path`, where `prefix`
    bytes (the lines up to and with the header) come first unless the range starts the file."""

    start: int
    end: int
    path: Path
    prefix: int = 0

    def offset(self, position: int) -> int:
        """The 0-based file offset of DuckDB's 1-based byte position in `path`."""
        return position - 1 - self.prefix + self.start


def convert(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    scan: TextScan,
    parquet_out: Path,
    failed: FailedRowsWriter,
    workdir: Path,
    row_cap: int | None = None,
) -> None:
    """Write the good rows of a CSV file to `parquet_out` and the rejected ones to `failed`;
    with `row_cap`, reading stops after that many good rows (the rows after it are not read)."""
    header_end = _check_header(source, scan)
    options, columns = _sniff(con, source, scan)
    relation = f"read_csv({lit(source)}, {options}, {_REJECTS})"
    _copy(con, relation, source, parquet_out, columns, row_cap)
    segments = [_Segment(0, scan.size, source)]
    errors, scans = "ingest_errors", "ingest_scans"
    cuts = _quote_cuts(con, errors, scans, segments, source, scan.newline, header_end)
    folder = workdir / "segments"
    try:
        if cuts:
            segments, errors, scans = _read_in_segments(
                con, source, scan, header_end, columns, cuts, parquet_out, folder, row_cap
            )
        original = [name for name, _ in columns]
        renamed = dict(zip(original, dedupe_column_names(original), strict=True))
        _collect_rejects(con, errors, scans, segments, source, scan.newline, renamed, failed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    source: Path,
    out: Path,
    columns: Columns,
    row_cap: int | None = None,
) -> None:
    try:
        copy_to_parquet(con, relation, out, columns, row_cap)
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        raise DatasetUnusable(
            f"could not read the file as CSV: {first_line(exc, source)}"
        ) from None


def _check_header(source: Path, scan: TextScan) -> int:
    """Refuse headers the sniffer would choke on (its time grows with the column count);
    return the offset where the line after the header starts."""
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
    return min(scan.first_offset + length + len(scan.newline), scan.size)


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


def _rejects(errors: str, scans: str, columns: str, having: str = "") -> str:
    """A query of the rejected records, one row each in file order: the path DuckDB read
    (segment files are named in file order), then `columns`."""
    return (
        f"SELECT s.file_path, {columns} FROM {errors} e JOIN {scans} s USING (scan_id, file_id) "
        f"GROUP BY s.file_path, scan_id, file_id, line {having} ORDER BY 1, 2"
    )


def _quote_cuts(
    con: duckdb.DuckDBPyConnection,
    errors: str,
    scans: str,
    segments: list[_Segment],
    source: Path,
    newline: bytes,
    header_end: int,
) -> set[int]:
    """Offsets of the lines after quotes whose rejected record runs past their line."""
    columns = (
        "min(line_byte_position), any_value(csv_line), "
        "min(byte_position) FILTER (WHERE error_type = 'UNQUOTED VALUE') AS quote"
    )
    rows = con.execute(_rejects(errors, scans, columns, "HAVING quote IS NOT NULL")).fetchall()
    by_path = {str(segment.path): segment for segment in segments}
    cuts: set[int] = set()
    with source.open("rb") as f:
        for path, position, csv_line, quote in rows:
            if _ends_on_quote_line((csv_line or "").encode(), quote - position):
                continue
            segment = by_path[path]
            cut = _line_end(f, segment.offset(quote), newline)
            if header_end < cut < segment.end:
                cuts.add(cut)
    return cuts


def _ends_on_quote_line(record: bytes, quote_at: int) -> bool:
    """Whether a record DuckDB gave whole ends on the line where its broken quote opens."""
    if len(record) >= DUCKDB_TEXT_CAP or not 0 <= quote_at < len(record):
        return False  # cut by DuckDB: cannot tell, cutting after the quote's line is harmless
    rest = record[quote_at:].rstrip(b"\r\n")
    return b"\n" not in rest and b"\r" not in rest


def _line_end(f: BinaryIO, offset: int, newline: bytes) -> int:
    """The offset just after the line break that ends the line holding `offset`."""
    f.seek(offset)
    while chunk := f.read(CHUNK_BYTES):
        found = chunk.find(newline)
        if found >= 0:
            return offset + found + len(newline)
        offset += len(chunk)
    return offset


def _read_in_segments(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    scan: TextScan,
    header_end: int,
    columns: Columns,
    cuts: set[int],
    parquet_out: Path,
    folder: Path,
    row_cap: int | None = None,
) -> tuple[list[_Segment], str, str]:
    """Copy the file again, read as segments cut at `cuts` (and at any further broken quote
    that reading shows): the segments, and the names of the reject tables of the last read."""
    options = _explicit_options(con, "ingest_scans", columns, scan)
    segments: list[_Segment] = []
    errors = scans = ""
    for attempt in range(MAX_SEGMENT_READS):
        if len(cuts) > MAX_QUOTE_CUTS:
            with source.open("rb") as f:
                first = _LineLocator(f, scan.newline).line_at(min(cuts) - 1)
            raise DatasetUnusable(
                f"more than {MAX_QUOTE_CUTS} quoted fields never close (the first at line "
                f"{first}): is '\"' really this file's quote character?"
            )
        segments = _write_segments(source, scan.size, header_end, sorted(cuts), folder)
        errors, scans = f"segment_errors_{attempt}", f"segment_scans_{attempt}"
        tables = f"store_rejects=true, rejects_table={lit(errors)}, rejects_scan={lit(scans)}"
        union = " UNION ALL ".join(
            f"SELECT * FROM read_csv({lit(segment.path)}, {options}, {tables})"
            for segment in segments
        )
        _copy(con, f"({union})", source, parquet_out, columns, row_cap)
        more = _quote_cuts(con, errors, scans, segments, source, scan.newline, header_end)
        more -= cuts
        if not more:
            break
        cuts |= more
    return segments, errors, scans


def _explicit_options(
    con: duckdb.DuckDBPyConnection, scans: str, columns: Columns, scan: TextScan
) -> str:
    """read_csv options that repeat what the sniffer chose for the first read, without sniffing."""
    (row,) = con.execute(
        "SELECT delimiter, quote, escape, newline_delimiter, skip_rows, date_format, "
        f"timestamp_format FROM {scans} ORDER BY scan_id DESC LIMIT 1"
    ).fetchall()
    delim, quote, escape, newline, skip, date_format, timestamp_format = row
    struct = ", ".join(f"{lit(name)}: {lit(kind)}" for name, kind in columns)
    options = [
        "auto_detect=false, header=true, comment=''",
        f"delim={lit(delim)}, quote={lit(_char(quote))}, escape={lit(_char(escape))}",
        f"new_line={lit(newline)}, skip={skip}, columns={{{struct}}}",
    ]
    if date_format:
        options.append(f"dateformat={lit(date_format)}")
    if timestamp_format:
        options.append(f"timestampformat={lit(timestamp_format)}")
    if scan.longest_line >= CHUNK_BYTES:
        options.append(_LONG_LINES)
    return ", ".join(options)


def _char(value: str | None) -> str:
    return "" if value in (None, "(empty)") else str(value)


def _write_segments(
    source: Path, size: int, header_end: int, cuts: list[int], folder: Path
) -> list[_Segment]:
    """Copy the byte ranges between cuts to files, the header lines before all but the first."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    segments = []
    with source.open("rb") as f:
        header = f.read(header_end)
        for i, (start, end) in enumerate(pairwise([0, *cuts, size])):
            path = folder / f"{i:06d}.csv"
            prefix = len(header) if i else 0
            with path.open("wb") as out:
                out.write(header[:prefix])
                f.seek(start)
                left = end - start
                while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
                    out.write(chunk)
                    left -= len(chunk)
            segments.append(_Segment(start, end, path, prefix))
    return segments


def _collect_rejects(
    con: duckdb.DuckDBPyConnection,
    errors: str,
    scans: str,
    segments: list[_Segment],
    source: Path,
    newline: bytes,
    renamed: dict[str, str],
    failed: FailedRowsWriter,
) -> None:
    """Turn DuckDB's reject rows into failed rows, one per record, in file order."""
    columns = (
        "min(line_byte_position), any_value(csv_line), "
        "list(error_type::VARCHAR ORDER BY column_idx), "
        "list(error_message ORDER BY column_idx), list(column_name ORDER BY column_idx), "
        "min(byte_position) FILTER (WHERE error_type = 'UNQUOTED VALUE')"
    )
    quotes = _quote_chars(con, scans)  # before the cursor: a query in between would end it
    cursor = con.execute(_rejects(errors, scans, columns))
    by_path = {str(segment.path): segment for segment in segments}
    with source.open("rb") as f:
        locator = _LineLocator(f, newline)
        while batch := cursor.fetchmany(10_000):
            for path, position, csv_line, kinds, messages, names, quote in batch:
                segment = by_path[path]
                csv_line = csv_line or ""
                line, start, text = locator.locate(segment.offset(position) + 1, csv_line)
                cut = len(csv_line.encode()) >= DUCKDB_TEXT_CAP
                raw, size = locator.raw_text(start, text) if cut else (text, None)
                unquoted = QUOTE_REASON
                if quote is not None and _never_closes(
                    csv_line.encode(), quote - position, *quotes
                ):
                    quote_line = locator.line_at(segment.offset(quote))
                    unquoted = UNCLOSED_REASON.format(line=quote_line)
                reason, total = _reason(kinds, messages, names, renamed, unquoted)
                failed.add(line, raw, reason, size or total)


def _quote_chars(con: duckdb.DuckDBPyConnection, scans: str) -> tuple[str, str]:
    """The quote and escape characters of the last read."""
    rows = con.execute(f"SELECT quote, escape FROM {scans} ORDER BY scan_id DESC LIMIT 1")
    row = rows.fetchall()
    return (_char(row[0][0]), _char(row[0][1])) if row else ('"', '"')


def _never_closes(record: bytes, quote_at: int, quote: str, escape: str) -> bool:
    """Whether no quote after the one at `quote_at` (escaped ones aside) could close it."""
    if not quote or not 0 <= quote_at < len(record):
        return False
    rest = record[quote_at + 1 :]
    if escape:
        rest = rest.replace((escape + quote).encode(), b"")
    return quote.encode() not in rest


def _reason(
    kinds: list[str],
    messages: list[str],
    columns: list[str | None],
    renamed: dict[str, str],
    unquoted: str = QUOTE_REASON,
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
            parts.append(unquoted)
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
        return self.line_at(start), start, text.rstrip("\r\n")

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

    def line_at(self, offset: int) -> int:
        """The 1-based line holding the byte at `offset`."""
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
