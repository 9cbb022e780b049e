"""CSV to Parquet with DuckDB's sniffer and read_csv(store_rejects=true).

The rows are copied straight to the typed copy, then checked and numbered with their source
lines (lines.py, joined by parquet_patch); a file that needs more is read into the staging table
instead (see convert), typed there (column_types) and written out (common.write_copy).

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
- The BOM is stripped; duplicate header names get _1, _2 suffixes, empty ones columnN, and
  names that differ only in case count as duplicates ("a,A" reads as a, A_1). The header is
  read again here, so that only exact repeats are renamed (common.dedupe_column_names).
- Empty fields after a row's last one are dropped without a reject ("3,12.0,c," under a
  three-field header reads as three fields, strict_mode or not): lines.py finds such rows and
  they become failed rows, as rows with extra values are.
- force_not_null turns a field matching a null string into '' rather than keeping its text, so
  null tokens are not given to the reader (see _intended_types).
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

import csv
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np

from services.processing.datasets import column_types
from services.processing.datasets.column_types import (
    WIDE_INTEGERS,
    nullstr_option,
    parse_as,
    refine,
    suspect_temporal,
    temporal_overrides,
    text_checks,
)
from services.processing.datasets.common import (
    BOM,
    CHUNK_BYTES,
    MAX_ROW_BYTES,
    RAW_TEXT_LIMIT,
    STAGE,
    Column,
    DatasetUnusable,
    FailedRowsWriter,
    Lines,
    TextScan,
    columns_of,
    copy_options,
    describe,
    first_line,
    ident,
    join_lines,
    lit,
    select_list,
    stage,
    staged_rows,
    staged_value,
    write_copy,
)
from services.processing.datasets.lines import (
    Dialect,
    Overlong,
    counted,
    data_lines,
    mapped,
    match_rows,
    scan_records,
)
from services.processing.datasets.parquet_patch import PatchError, row_group_sizes
from services.processing.datasets.parquet_reader import friendly_type

log = logging.getLogger(__name__)

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


@dataclass
class _Read:
    """What a read of the file needs and leaves behind."""

    con: duckdb.DuckDBPyConnection
    source: Path
    scan: TextScan
    header_end: int
    options: str  # the sniffed read_csv options
    nulls: list[str]  # the null tokens
    out: Path
    workdir: Path
    row_cap: int | None
    direct: bool = True  # straight to the copy; False: into the staging table
    segments: list[_Segment] = field(default_factory=list)
    errors: str = "ingest_errors"
    scans: str = "ingest_scans"
    cuts: set[int] = field(default_factory=set)
    over_cap: bool = False
    sniffed: dict[str, str] = field(default_factory=dict)  # source name -> sniffed type
    dialect: Dialect | None = None  # None: not one byte each (line numbers are then left out)
    trailing: bool = False  # the header ends with a delimiter

    @property
    def folder(self) -> Path:
        return self.workdir / "segments"

    def typed(self, columns: list[Column]) -> str:
        """The read options given the columns' types where they differ from the sniffed ones."""
        changed = {c.source: c.kind for c in columns if c.kind != self.sniffed.get(c.source)}
        if not changed:
            return self.options
        struct = ", ".join(f"{lit(n)}: {lit(k)}" for n, k in changed.items())
        return self.options + f", types={{{struct}}}"


def convert(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    scan: TextScan,
    parquet_out: Path,
    failed: FailedRowsWriter,
    workdir: Path,
    row_cap: int | None = None,
    null_values: Sequence[str] | None = None,
) -> None:
    """Write the good rows of a CSV file to `parquet_out` and the rejected ones to `failed`;
    with `row_cap`, reading stops after that many good rows (the rows after it are not read).
    `null_values` are the null tokens (None: column_types.DEFAULT_NULL_VALUES).

    The rows go straight to the copy, their line numbers joined to it afterwards. A file that
    needs more than that is read again into the staging table, where everything is possible:
    a date word in a date column, a row with extra empty fields to leave out, text of numbers,
    integers past int64, a token column whose later value is not of its type (see
    column_types), a header ending with a delimiter."""
    header_end = _check_header(source, scan)
    nulls = column_types.null_values(null_values)
    options, described = _sniff(con, source, scan)
    dialect, tokened = _sniff_again(con, source, scan, options, nulls)
    names, trailing = _header_names(source, scan, dialect, [n for n, _ in described])
    columns = columns_of(described, names)
    _intended_types(columns, tokened)
    read = _Read(con, source, scan, header_end, options, nulls, parquet_out, workdir, row_cap)
    read.sniffed, read.dialect, read.trailing = dict(described), dialect, trailing
    try:
        if _convert_directly(read, columns, failed):
            return
        failed.reset()
        read.direct = False
        _convert_staged(read, columns, failed)
    finally:
        shutil.rmtree(read.folder, ignore_errors=True)


def _convert_directly(read: _Read, columns: list[Column], failed: FailedRowsWriter) -> bool:
    """The common way: one COPY from the file to the copy, checks on the copy, line numbers
    joined. False when the file needs the staged way (nothing of this read is kept then)."""
    con, source, scan = read.con, read.source, read.scan
    if read.trailing or any(c.kind.upper() in WIDE_INTEGERS for c in columns):
        return False
    for c in columns:  # token columns: converted on the way (an error sends it the staged way)
        if c.intended:
            c.target, c.parse, c.null_tokens = c.intended, c.intended_parse, tuple(read.nulls)
    try:
        _read(read, columns, 0)
    except DatasetUnusable:
        if any(c.intended for c in columns):
            _reset(columns)
            return False  # a token column's later value is not of its type (or the file is bad)
        raise
    if read.over_cap:  # a dataset over its row limit: written, for the count only
        return True
    copy = f"read_parquet({lit(read.out)})"
    stored = lambda c: ident(c.stored)  # noqa: E731 - a column's value in the copy
    suspects = suspect_temporal(con, columns, copy, stored, read.out)
    overrides = temporal_overrides(
        con, suspects, lambda cs: _as_text(read, columns, cs), read.nulls
    )
    if overrides:
        _reset(columns)
        for c in columns:
            if c.source in overrides:
                c.kind, c.intended, c.intended_parse = overrides[c.source], None, None
        return False
    numbers, empty = text_checks(con, columns, read.nulls, copy, stored)
    if numbers:
        _reset(columns)
        return False
    rejected = _collect_rejects(
        con,
        read.errors,
        read.scans,
        read.segments,
        source,
        scan.newline,
        {c.source: c.name for c in columns},
        failed,
        read.dialect.delimiter.decode() if read.dialect is not None else "",
    )
    rows = sum(row_group_sizes(read.out))
    lines, overlong = _line_numbers(read, columns, rejected, rows, copy, stored)
    if overlong:
        _reset(columns)
        return False
    try:  # a file without rows keeps text columns
        join_lines(read.out, lines, empty if rows else [], read.workdir)
    except PatchError as exc:
        log.warning("%s: line numbers not joined (%s); reading it again", source.name, exc)
        _reset(columns)
        return False
    return True


def _reset(columns: list[Column]) -> None:
    """Forget the types a direct read gave: the staged way decides them again."""
    for c in columns:
        c.target, c.parse, c.null_tokens = None, None, ()


def _convert_staged(read: _Read, columns: list[Column], failed: FailedRowsWriter) -> None:
    """Read the file into the staging table, type it there (column_types), write the copy."""
    con, source, scan = read.con, read.source, read.scan
    checked: set[str] = set()
    attempt = 1
    while True:  # ends: a column read again as DOUBLE or text is never suspect again
        _read(read, columns, attempt)
        attempt += 1
        if read.over_cap:  # a dataset over its row limit: written, for the count only
            return
        suspects = [
            c
            for c in suspect_temporal(con, columns, STAGE, staged_value)
            if c.source not in checked
        ]
        checked.update(c.source for c in suspects)
        overrides = temporal_overrides(
            con, suspects, lambda cs: _as_text(read, columns, cs), read.nulls
        )
        if not overrides:
            break
        for c in columns:
            if c.source in overrides:
                c.kind, c.intended, c.intended_parse = overrides[c.source], None, None
    rejected = _collect_rejects(
        con,
        read.errors,
        read.scans,
        read.segments,
        source,
        scan.newline,
        {c.source: c.name for c in columns},
        failed,
        read.dialect.delimiter.decode() if read.dialect is not None else "",
    )
    _drop_trailing_column(con, columns, read.trailing)
    lines, overlong = _line_numbers(read, columns, rejected, staged_rows(con), STAGE, staged_value)
    if overlong:
        _fail_overlong(con, overlong, len(columns), failed)
    refine(con, columns, read.nulls, staged_rows(con))
    write_copy(con, columns, read.out, lines)


def _read(read: _Read, columns: list[Column], attempt: int) -> None:
    """Read the file (again, after a broken quote, in segments cut after it) to the copy or the
    staging table; the reject tables are the attempt's own."""
    con, source, scan = read.con, read.source, read.scan
    suffix = f"_{attempt}" if attempt else ""
    read.errors, read.scans = f"ingest_errors{suffix}", f"ingest_scans{suffix}"
    if read.cuts:  # a read before found broken quotes: read the segments again
        _read_in_segments(read, columns, set(read.cuts), attempt)
        return
    rejects = f"rejects_table={lit(read.errors)}, rejects_scan={lit(read.scans)}"
    relation = f"read_csv({lit(source)}, {read.typed(columns)}, {rejects})"
    read.segments = [_Segment(0, scan.size, source)]
    read.over_cap = _write(read, relation, columns)
    if read.over_cap:
        return
    cuts = _quote_cuts(
        con, read.errors, read.scans, read.segments, source, scan.newline, read.header_end
    )
    if cuts:
        _read_in_segments(read, columns, cuts, attempt)


def _write(read: _Read, relation: str, columns: list[Column]) -> bool:
    """Read a relation of the file to the copy or the staging table; True when the read
    reached the row cap."""
    try:
        if read.direct:
            return copy_to_parquet(read.con, relation, read.out, columns, read.row_cap)
        stage(read.con, relation, read.row_cap)
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        raise DatasetUnusable(f"could not read the file as CSV: {first_line(exc)}") from None
    if read.row_cap is None or staged_rows(read.con) < read.row_cap:
        return False
    write_copy(read.con, columns, read.out, Lines(None))  # over the row limit: for the count
    return True


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    out: Path,
    columns: list[Column],
    row_cap: int | None = None,
) -> bool:
    """COPY a read of the file straight to the copy (with `row_cap`, its first rows only: the
    read stops there); True when it reached `row_cap` rows, a dataset over its row limit."""
    select = select_list(columns, lambda c: ident(c.source))
    limit = "" if row_cap is None else f" LIMIT {int(row_cap)}"
    con.execute(
        f"COPY (SELECT {', '.join(select)} FROM {relation}{limit}) TO {lit(out)} "
        f"({copy_options(columns)})"
    )
    return row_cap is not None and sum(row_group_sizes(out)) >= row_cap


def _as_text(read: _Read, columns: list[Column], text: list[Column]) -> str:
    """The file read with the `text` columns as text, bad rows skipped (for a look at values)."""
    sources = {c.source for c in text}
    struct = ", ".join(
        f"{lit(c.source)}: {lit('VARCHAR' if c.source in sources else c.kind)}" for c in columns
    )
    options = read.options + f", types={{{struct}}}, store_rejects=false, ignore_errors=true"
    return f"read_csv({lit(read.source)}, {options.replace('store_rejects=true, ', '')})"


def _header_names(
    source: Path, scan: TextScan, dialect: Dialect | None, duck: list[str]
) -> tuple[list[str] | None, bool]:
    """The header's own names, where DuckDB renamed some (it makes names unique ignoring case:
    "a,A" reads as a, A_1, and names empty ones columnN), and whether the header ends with a
    delimiter (an unnamed last column). None when the header does not read as DuckDB read it."""
    if dialect is None:
        return None, False
    delimiter, quote, escape = (
        v.decode() for v in (dialect.delimiter, dialect.quote, dialect.escape)
    )
    with source.open("rb") as f:
        f.seek(scan.first_offset)
        line = f.read(MAX_HEADER_BYTES + 1).split(scan.newline, 1)[0]
    text = line.removeprefix(BOM).decode("utf-8", "replace").removesuffix("\r")
    try:
        fields = next(
            csv.reader(
                [text],
                delimiter=delimiter,
                quotechar=quote or None,
                quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
                escapechar=escape if escape and escape != quote else None,
                doublequote=escape == quote,
                strict=False,
            )
        )
    except (csv.Error, StopIteration):
        return None, False
    trailing = len(fields) > 1 and fields[-1] == "" and text.endswith(delimiter)
    if len(fields) != len(duck):
        return None, trailing
    for i, (own, read) in enumerate(zip(fields, duck, strict=True)):
        renamed = re.fullmatch(re.escape(own) + r"(_\d+)*", read) is not None
        if not (renamed or (not own.strip() and read == f"column{i}")):
            return None, trailing
    return fields, trailing


def _drop_trailing_column(
    con: duckdb.DuckDBPyConnection, columns: list[Column], trailing: bool
) -> None:
    """Leave out the unnamed last column a header ending with a delimiter makes, when no row has
    a value there: each row ends with the delimiter as the header does."""
    if not trailing or len(columns) < 2:
        return
    last = columns[-1]
    found = con.execute(f"SELECT count({staged_value(last)}) FROM {STAGE}").fetchone()
    if found is not None and found[0] == 0:
        last.dropped = True


@dataclass(frozen=True)
class _Rejected:
    """What the failed rows of the read hold: their lines, and their delimiters (to count a
    file's fields against); `whole` is False when a raw text was cut before it was counted."""

    lines: list[int]
    delimiters: int
    whole: bool


def _line_numbers(
    read: _Read,
    columns: list[Column],
    rejected: _Rejected,
    rows: int,
    relation: str,
    value: Callable[[Column], str],
) -> tuple[Lines, list[Overlong]]:
    """The lines of the `rows` rows read (into `relation`, `value` giving a column there), and
    the rows with more fields than the header (empty ones, which DuckDB drops silently)."""
    source, scan = read.source, read.scan
    base = scan.first_line + 1  # the line after the header
    dialect = read.dialect
    one_column = len(columns) == 1
    before = _count_bytes(source, 0, read.header_end, scan.newline)
    lines_after, blank_end = data_lines(
        source, scan.size, read.header_end, scan.newlines - before, scan.newline
    )
    records = lines_after if one_column else lines_after - blank_end
    simple = records == rows + len(rejected.lines)
    if simple and dialect is not None and rejected.whole:
        simple = _fields_add_up(read, columns, rejected, rows, dialect, relation, value)
    if simple:
        return counted(rejected.lines, base, rows), []
    if dialect is None:
        return Lines(None), []
    found = scan_records(
        source, read.header_end, scan.size, base, dialect, sorted(read.cuts), len(columns) - 1
    )
    matched = match_rows(
        found, rejected.lines, rows, one_column, len(columns), source, scan.newline
    )
    if matched is None:
        log.warning("%s: rows and records do not match up; line numbers left out", source.name)
        return Lines(None), []
    lines, overlong = matched
    return mapped(lines, base, [o.row for o in overlong]), overlong


def _fields_add_up(
    read: _Read,
    columns: list[Column],
    rejected: _Rejected,
    rows: int,
    dialect: Dialect,
    relation: str,
    value: Callable[[Column], str],
) -> bool:
    """Whether the file's delimiters are those of its header, its rows (one fewer than the
    fields) and its failed rows, and those inside text values: no row has extra fields."""
    con, source, scan = read.con, read.source, read.scan
    if scan.delimiter == dialect.delimiter:
        total = scan.delimiters
    else:
        total = _count_bytes(source, scan.first_offset, scan.size, dialect.delimiter)
    header = _count_bytes(source, scan.first_offset, read.header_end, dialect.delimiter)
    structure = header + (len(columns) - 1) * rows + rejected.delimiters
    if total == structure:
        return True
    text = [c for c in columns if c.kind == "VARCHAR" and c.target is None and not c.dropped]
    if total < structure or not text:
        return False
    d = lit(dialect.delimiter.decode())
    inside = " + ".join(
        f"coalesce(sum(length({value(c)}) - length(replace({value(c)}, {d}, ''))), 0)" for c in text
    )
    found = con.execute(f"SELECT {inside} FROM {relation}").fetchone()
    return found is not None and total == structure + int(found[0])


def _fail_overlong(
    con: duckdb.DuckDBPyConnection, overlong: list[Overlong], fields: int, failed: FailedRowsWriter
) -> None:
    """Make rows with extra empty fields failed rows, as rows with extra values are."""
    for row in overlong:
        reason = f"expected {fields} fields, found {row.fields}"
        failed.add(row.line, row.raw, reason, row.size)
    ids = ", ".join(str(row.row) for row in overlong)
    con.execute(f"DELETE FROM {STAGE} WHERE rowid IN ({ids})")


def _sniff_again(
    con: duckdb.DuckDBPyConnection, source: Path, scan: TextScan, options: str, nulls: list[str]
) -> tuple[Dialect | None, _Tokened | None]:
    """The delimiter, quote and escape the sniffer chose, when each is one byte at most, and
    the columns it finds with the null tokens set aside (see _intended_types). This sniff looks
    at the first SAMPLE_ROWS rows even of a file typed from all of its rows (sniffing all of a
    32 MiB file costs half its conversion again): the type it gives a text column is a guess
    that the conversion checks."""
    newline = scan.newline
    options = options.replace("sample_size=-1", f"sample_size={SAMPLE_ROWS}")
    tokens = f", {nullstr_option(nulls)}" if len(nulls) > 1 else ""
    try:
        row = con.execute(
            "SELECT Delimiter, Quote, Escape, Columns, DateFormat, TimestampFormat "
            f"FROM sniff_csv({lit(source)}, {options}{tokens})"
        ).fetchone()
    except duckdb.Error:
        return None, None
    if row is None:
        return None, None
    tokened = _Tokened(row[3], row[4], row[5]) if tokens else None
    delimiter, quote, escape = (_char(v).encode() for v in row[:3])
    if len(delimiter) != 1 or len(quote) > 1 or len(escape) > 1:
        return None, tokened
    return Dialect(delimiter, quote, escape, newline), tokened


@dataclass(frozen=True)
class _Tokened:
    """What the sniffer finds with the null tokens set aside."""

    columns: list[dict[str, str]]
    date_format: str | None
    timestamp_format: str | None


def _count_bytes(path: Path, start: int, end: int, byte: bytes) -> int:
    """How many `byte` the file holds in [start, end)."""
    count = 0
    with path.open("rb") as f:
        f.seek(start)
        while start < end and (chunk := f.read(min(CHUNK_BYTES * 16, end - start))):
            count += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == byte[0]))
            start += len(chunk)
    return count


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


def _intended_types(columns: list[Column], tokened: _Tokened | None) -> None:
    """A text column that the sniffer types otherwise with the null tokens set aside (numbers
    with "NA" among them) is read as text and turned into that type on the way to the copy
    (column_types), the tokens becoming NULL. Reading it typed with the tokens as DuckDB's null
    strings would cost every field a match against each token, and the tokens of a real text
    column would be lost (force_not_null turns them into ''). A float column keeps its NaN
    ("nan", "NaN": a float value, missing as a null is, as in pandas)."""
    if tokened is None or len(tokened.columns) != len(columns):
        return
    for c, typed in zip(columns, tokened.columns, strict=True):
        kind = typed["type"]
        if typed["name"] == c.source and c.kind == "VARCHAR" and kind != "VARCHAR":
            c.intended = kind
            c.intended_parse = parse_as(kind, tokened.date_format, tokened.timestamp_format)


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


def _read_in_segments(read: _Read, columns: list[Column], cuts: set[int], attempt: int) -> None:
    """Read the file again as segments cut at `cuts` (and at any further broken quote that
    reading shows); the read keeps the segments and the reject tables of the last read."""
    con, source, scan = read.con, read.source, read.scan
    options = _explicit_options(con, _first_scans(con), columns, scan)
    for k in range(MAX_SEGMENT_READS):
        if len(cuts) > MAX_QUOTE_CUTS:
            with source.open("rb") as f:
                first = _LineLocator(f, scan.newline).line_at(min(cuts) - 1)
            raise DatasetUnusable(
                f"more than {MAX_QUOTE_CUTS} quoted fields never close (the first at line "
                f"{first}): is '\"' really this file's quote character?"
            )
        segments = _write_segments(source, scan.size, read.header_end, sorted(cuts), read.folder)
        errors, scans = f"segment_errors_{attempt}_{k}", f"segment_scans_{attempt}_{k}"
        tables = f"store_rejects=true, rejects_table={lit(errors)}, rejects_scan={lit(scans)}"
        union = " UNION ALL ".join(
            f"SELECT * FROM read_csv({lit(segment.path)}, {options}, {tables})"
            for segment in segments
        )
        read.segments, read.errors, read.scans, read.cuts = segments, errors, scans, set(cuts)
        read.over_cap = _write(read, f"({union})", columns)
        if read.over_cap:
            return
        more = _quote_cuts(con, errors, scans, segments, source, scan.newline, read.header_end)
        more -= cuts
        if not more:
            break
        cuts |= more


def _first_scans(con: duckdb.DuckDBPyConnection) -> str:
    """The reject-scan table of the first whole-file read of this connection."""
    found = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'ingest_scans%' "
        "ORDER BY length(table_name), table_name LIMIT 1"
    ).fetchone()
    return str(found[0]) if found else "ingest_scans"


def _explicit_options(
    con: duckdb.DuckDBPyConnection,
    scans: str,
    columns: list[Column],
    scan: TextScan,
) -> str:
    """read_csv options that repeat what the sniffer chose for the first read, without sniffing."""
    (row,) = con.execute(
        "SELECT delimiter, quote, escape, newline_delimiter, skip_rows, date_format, "
        f"timestamp_format FROM {scans} ORDER BY scan_id DESC LIMIT 1"
    ).fetchall()
    delim, quote, escape, newline, skip, date_format, timestamp_format = row
    struct = ", ".join(f"{lit(c.source)}: {lit(c.kind)}" for c in columns)
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
    delimiter: str = "",
) -> _Rejected:
    """Turn DuckDB's reject rows into failed rows, one per record, in file order; count the
    `delimiter` in them."""
    columns = (
        "min(line_byte_position), any_value(csv_line), "
        "list(error_type::VARCHAR ORDER BY column_idx), "
        "list(error_message ORDER BY column_idx), list(column_name ORDER BY column_idx), "
        "min(byte_position) FILTER (WHERE error_type = 'UNQUOTED VALUE')"
    )
    quotes = _quote_chars(con, scans)  # before the cursor: a query in between would end it
    cursor = con.execute(_rejects(errors, scans, columns))
    by_path = {str(segment.path): segment for segment in segments}
    lines: list[int] = []
    delimiters = 0
    whole = True
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
                lines.append(line)
                delimiters += raw.count(delimiter) if delimiter else 0
                whole = whole and not cut and total is None
    return _Rejected(lines, delimiters, whole)


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
