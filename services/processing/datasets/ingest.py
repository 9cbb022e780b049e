"""Dataset ingest: validate an uploaded file and convert it to a typed Parquet copy.

Pure: a local file in, a Parquet copy plus a summary out (no database, storage or
network). One fresh DuckDB connection per call does the parsing and writing. The
format specifics live in csv_reader, json_reader and parquet_reader (which also reads
the summary back from the copy); this module is the entry point that dispatches to them,
and what they share is in common.

Outcomes: a file with nothing usable raises DatasetUnusable (empty, not UTF-8, not
Parquet, broken JSON array, no parsable row, ...); otherwise bad rows become failed
rows (physical 1-based line number, raw text capped at 64 KiB, reason) and the good
rows land in the copy.

The copy holds the dataset's columns, in order, and last LINE_COLUMN: BIGINT, the row's line
in the source (lines.py), which is not one of the dataset's columns (summarize leaves it out of
the columns and the preview). The copy's own column names differ from the dataset's only where
two of those differ only in case (common.storage_names); its footer keeps the dataset's
(NAMES_KEY). A text file is copied straight from DuckDB's parallel read; what is known only
once the whole file is read is then looked at on the copy: each row's line, joined to the
copy as a column of its own (parquet_patch: the other columns are not written again), and the
typing rules of column_types (a text column without a value becomes DOUBLE the same way). The
few files that need more (a date word in a date column, a row with a trailing delimiter,
numbers with a "+", integers past int64) are read again into a staging table, where those
rules have everything they need.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from schemas.domain.records import DatasetFormat
from services.processing.datasets import csv_reader, detect, json_reader, parquet_reader
from services.processing.datasets.common import (
    BOM,
    CHUNK_BYTES,
    MAX_ROW_BYTES,
    PARQUET_COPY_OPTIONS,
    PREVIEW_ROWS,
    DatasetUnusable,
    FailedRowsWriter,
    IngestResult,
    TextScan,
    lit,
)

# The names callers outside the package use (workers, use cases, benchmarks, tests).
__all__ = [
    "EXPANSION_FACTOR",
    "MAX_EXPANDED_BYTES",
    "MEMORY_LIMIT",
    "PARQUET_COPY_OPTIONS",
    "PREVIEW_ROWS",
    "DatasetUnusable",
    "IngestResult",
    "connect",
    "ingest",
    "iter_failed_rows",
    "scan_text",
    "too_many_rows",
]

MEMORY_LIMIT = "1GB"  # DuckDB's, unless the caller (a worker, from its budget) gives one
CSV_DELIMITERS = b",;\t|"  # what a CSV header is looked at for while the file is scanned
EXPANSION_FACTOR = detect.EXPANSION_FACTOR
MAX_EXPANDED_BYTES = detect.MAX_EXPANDED_BYTES


def ingest(
    source: Path,
    fmt: DatasetFormat,
    parquet_out: Path,
    workdir: Path,
    *,
    memory_limit: str = MEMORY_LIMIT,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
    max_rows: int | None = None,
    null_values: Sequence[str] | None = None,
) -> IngestResult:
    """Validate `source`, write its typed Parquet copy to `parquet_out`, summarise it.

    `memory_limit` is DuckDB's (it spills to `workdir` beyond it). `max_expanded_bytes`
    bounds a gzip upload once decompressed: a caller passes its upload limit times
    EXPANSION_FACTOR (the default is that for the default upload limit). A dataset of more
    than `max_rows` good rows is unusable: a Parquet file is refused from its footer before
    anything is converted, a text file once its read passes the limit (the rest is not read).
    `null_values` are a CSV file's null tokens (None: column_types.DEFAULT_NULL_VALUES).
    """
    fmt = DatasetFormat(fmt)
    workdir.mkdir(parents=True, exist_ok=True)
    parquet_out.parent.mkdir(parents=True, exist_ok=True)
    if source.stat().st_size == 0:
        raise DatasetUnusable("file is empty")
    failed = FailedRowsWriter(workdir / "failed_rows.parquet")
    made: list[Path] = []  # converted copies in workdir, removed at the end
    # One row past the limit shows that it is passed, without reading further.
    row_cap = None if max_rows is None else max_rows + 1
    con = connect(workdir, memory_limit)
    try:
        declared = fmt
        source, fmt = detect.prepare(source, fmt, workdir, max_expanded_bytes, made)
        if fmt is DatasetFormat.parquet:
            _check_parquet_rows(con, source, max_rows)
            _convert_parquet(con, source, declared, parquet_out)
        elif fmt is DatasetFormat.csv:
            scan = scan_text(source, CSV_DELIMITERS)
            _convert_csv(
                con, source, scan, parquet_out, workdir, memory_limit, failed, row_cap, null_values
            )
        else:
            scan = scan_text(source)
            json_reader.convert(con, source, fmt, scan, parquet_out, workdir, failed, row_cap)
        failed_path = failed.close()
        result = parquet_reader.summarize(con, parquet_out, failed.count, failed_path)
        if max_rows is not None and result.row_count > max_rows:
            raise too_many_rows(max_rows)
        if result.row_count == 0 and failed.first is not None:
            line, reason = failed.first
            raise DatasetUnusable(f"no row could be parsed; first error at line {line}: {reason}")
        return result
    finally:
        failed.close()
        con.close()
        for path in made:
            path.unlink(missing_ok=True)


def too_many_rows(max_rows: int, rows: int | None = None) -> DatasetUnusable:
    """The error of a dataset over the row limit; `rows` when the count is known."""
    count = f"{rows} rows, over" if rows is not None else f"more than {max_rows} rows,"
    return DatasetUnusable(
        f"too many rows: {count} the limit of {max_rows} rows per dataset (ASSAY_MAX_ROWS)"
    )


def _check_parquet_rows(con: duckdb.DuckDBPyConnection, source: Path, max_rows: int | None) -> None:
    """Refuse a Parquet file whose footer counts more than `max_rows` rows (it has no failed
    rows: every row is a row of the copy); an unreadable footer is the conversion's to report."""
    if max_rows is None:
        return
    try:
        meta = con.execute("SELECT num_rows FROM parquet_file_metadata(?)", [str(source)])
        found = meta.fetchone()
    except duckdb.Error:
        return
    if found is not None and found[0] is not None and found[0] > max_rows:
        raise too_many_rows(max_rows, int(found[0]))


def _convert_parquet(
    con: duckdb.DuckDBPyConnection, source: Path, declared: DatasetFormat, parquet_out: Path
) -> None:
    """Parquet, declared or recognised by its magic bytes; what the file is when it is not."""
    try:
        parquet_reader.convert(con, source, parquet_out)
    except DatasetUnusable as exc:
        if declared is not DatasetFormat.parquet:
            problem = str(exc).split(": ", 1)[-1]
            message = f"this is a Parquet file (uploaded as {declared}) that cannot be read: "
            raise DatasetUnusable(message + problem) from None
        what = detect.binary_kind(detect.read_head(source))
        if what is None:
            raise
        raise DatasetUnusable(f"{exc}; this is {what[0]}") from None


def _convert_csv(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    scan: TextScan,
    parquet_out: Path,
    workdir: Path,
    memory_limit: str,
    failed: FailedRowsWriter,
    row_cap: int | None,
    null_values: Sequence[str] | None,
) -> None:
    """CSV; read again from an LF-only copy when DuckDB fails and the line endings are mixed
    (on a connection of its own: reject tables fill up per connection)."""
    try:
        csv_reader.convert(con, source, scan, parquet_out, failed, workdir, row_cap, null_values)
        return
    except DatasetUnusable:
        if failed.count or not detect.mixes_newlines(source):
            raise
    fixed = workdir / "newlines.csv"
    retry = connect(workdir, memory_limit)
    try:
        detect.normalize_newlines(source, fixed)
        again = scan_text(fixed, CSV_DELIMITERS)
        csv_reader.convert(retry, fixed, again, parquet_out, failed, workdir, row_cap, null_values)
    finally:
        retry.close()
        fixed.unlink(missing_ok=True)


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


def scan_text(path: Path, delimiters: bytes = b"") -> TextScan:
    """Check UTF-8 and emptiness in one streaming pass; raise DatasetUnusable if either fails.

    On the way, numpy counts the newline bytes (line numbers of the copy's rows are checked
    against them) and, given candidate `delimiters`, the bytes of the one the first line holds
    most of. The line numbers reported (first non-blank line, first overlong line, first
    invalid byte) are counted afterwards, up to their offset.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = run = line_start = longest = 0  # run: bytes of the unfinished line
    nl = b"\n"
    first_char = b""
    first_line = first_offset = 0
    long_line: tuple[int, int] | None = None
    delimiter = b""
    with path.open("rb") as f, _ByteCounter() as counter:
        while chunk := f.read(CHUNK_BYTES):
            if offset == 0 and b"\n" not in chunk and b"\r" in chunk:
                nl = b"\r"
            counter.add(chunk, nl, 0)
            if delimiter:
                counter.add(chunk, delimiter, 1)
            pending = decoder.getstate()[0]
            if pending or not chunk.isascii():
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    base = offset - len(pending)
                    newlines = _count_lines(path, base, nl)
                    raise _not_utf8(path, exc, base, nl, newlines, line_start) from None
            if not first_char:
                skip = 3 if offset == 0 and chunk.startswith(BOM) else 0
                text = chunk[skip:].lstrip()
                if text:
                    first_char, at = text[:1], len(chunk) - len(text)
                    first_line = _count_lines(path, offset, nl) + chunk.count(nl, 0, at) + 1
                    before = chunk.rfind(nl, 0, at)
                    first_offset = offset + before + 1 if before >= 0 else line_start
                    delimiter = _likeliest(chunk, at, nl, delimiters)
                    if delimiter:
                        counter.add(chunk[before + 1 :], delimiter, 1)
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
            raise _not_utf8(path, exc, base, nl, newlines, line_start) from None
        newlines, counted = counter.totals()
    if not first_char:
        raise DatasetUnusable("file is empty")
    if long_line is None and run > MAX_ROW_BYTES:
        long_line = (_count_lines(path, offset, nl) + 1, run)
    longest = max(longest, run)
    return TextScan(
        offset,
        nl,
        first_char,
        first_line,
        first_offset,
        longest,
        long_line,
        newlines,
        delimiter,
        counted,
    )


class _ByteCounter:
    """Counts bytes of the scanned chunks on a thread of its own, while the scan reads on
    (numpy releases the GIL): the counts cost the scan next to nothing on a second core."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-count")
        self._pending: deque[Future[tuple[int, int]]] = deque()
        self._totals = [0, 0]

    def __enter__(self) -> _ByteCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, data: bytes, byte: bytes, slot: int) -> None:
        """Count `byte` in `data` into total `slot`."""
        self._pending.append(self._pool.submit(_count, data, byte[0], slot))
        while len(self._pending) > 4:  # chunks waiting to be counted stay few
            self._take(self._pending.popleft())

    def totals(self) -> tuple[int, int]:
        while self._pending:
            self._take(self._pending.popleft())
        return self._totals[0], self._totals[1]

    def _take(self, future: Future[tuple[int, int]]) -> None:
        slot, count = future.result()
        self._totals[slot] += count


def _count(data: bytes, byte: int, slot: int) -> tuple[int, int]:
    return slot, int(np.count_nonzero(np.frombuffer(data, np.uint8) == byte))


def _likeliest(chunk: bytes, at: int, nl: bytes, candidates: bytes) -> bytes:
    """The candidate byte the line holding chunk[at] has most of (b"" for none of them)."""
    if not candidates:
        return b""
    end = chunk.find(nl, at)
    line = chunk[chunk.rfind(nl, 0, at) + 1 : end if end >= 0 else len(chunk)]
    counts = {line.count(c): bytes([c]) for c in reversed(candidates)}
    best = max(counts)
    return counts[best] if best else b""


def _count_lines(path: Path, end: int, nl: bytes) -> int:
    """How many `nl` the file holds before byte offset `end`."""
    count = 0
    with path.open("rb") as f:
        while end > 0 and (chunk := f.read(min(CHUNK_BYTES, end))):
            count += chunk.count(nl)
            end -= len(chunk)
    return count


def _not_utf8(
    path: Path, exc: UnicodeDecodeError, base: int, nl: bytes, newlines: int, line_start: int
) -> DatasetUnusable:
    """Describe the first invalid UTF-8 byte; `base` is the file offset of exc.object[0].

    The advice depends on what the start of the file looks like: text in another encoding,
    or binary data (named when its signature is known)."""
    before = exc.object[: exc.start]
    last = before.rfind(nl)
    if last >= 0:
        line_start = base + last + 1
    bad_offset = base + exc.start
    line = newlines + before.count(nl) + 1
    return DatasetUnusable(
        f"file is not valid UTF-8: invalid byte 0x{exc.object[exc.start]:02x} at line "
        f"{line}, column {bad_offset - line_start + 1} "
        f"(byte offset {bad_offset}); {detect.not_text_hint(detect.read_head(path))}"
    )
