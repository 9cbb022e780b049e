"""Where each row of the copy starts in the source file: the copy's LINE_COLUMN.

A row's line is the 1-based physical line of the source where its record starts, counted as
failed rows count them (the header of a CSV file is line 1, or later after blank lines; a
UTF-16 file's lines are those of its text; a file with mixed line endings is counted as if all
were LF). For NDJSON it is the object's line, for a JSON array the element's index + 1, for
Parquet the row's index + 1.

The staged rows are in file order, so the copy's rows are the source's records in order less
the failed ones. In the common case every line after the header is one record (the newline
count of the file says so): a row's line is then the header's line + 1 + its row id + the
failed records before it. Otherwise (blank lines, which DuckDB skips; quoted line breaks, which
make a record span lines) the records are found in the bytes: a line break ends a record when
the quotes before it, since the record's segment began, are even in number (an escaped quote
written as two quotes keeps the count even). The records found must be the rows and failed rows
DuckDB read, one for one; when they are not (a quoting this does not model, such as a backslash
escape), the rows' lines are left NULL rather than guessed.

The same pass counts each record's delimiters outside quotes: DuckDB silently drops empty
fields after the last one (`3,12.0,c,` reads as three fields), so a record with more fields
than the header is found here, and made a failed row like any other of the wrong width. A
delimiter count of the whole file, compared with what the rows and failed rows hold, tells when
such a record may exist, so clean files skip the pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from services.processing.datasets.common import CHUNK_BYTES, MAX_STEPS, RAW_TEXT_LIMIT, Lines

SCAN_BYTES = 16 * CHUNK_BYTES  # bytes numpy looks at per step
BATCH_ROWS = 1 << 20  # line numbers made per batch


@dataclass(frozen=True)
class Dialect:
    """How a CSV file's records are written (one byte each; an empty quote: none)."""

    delimiter: bytes
    quote: bytes
    escape: bytes
    newline: bytes


@dataclass(frozen=True)
class Overlong:
    """A record DuckDB read as a row although it has more fields than the header: the extra
    fields are empty (a trailing delimiter)."""

    row: int  # its place among the rows read
    line: int
    raw: str
    size: int
    fields: int


@dataclass
class Records:
    """The records of a CSV file's data (the lines after the header) as the bytes show them."""

    lines: np.ndarray  # start line of each record, in order
    delimiters: np.ndarray  # delimiters outside quotes in each record
    blank: np.ndarray  # records that are an empty line
    # (line, start offset, end offset) of the records with more delimiters than the header
    wide: list[tuple[int, int, int]] = field(default_factory=list)


def counted(failed_lines: list[int], base: int, rows: int) -> Lines:
    """Lines when every line from `base` on is one record and `failed_lines` (sorted) are the
    failed ones: row r is on line base + r + (failed lines before it)."""
    if not failed_lines:
        return Lines(base)
    failed = np.asarray(failed_lines, dtype=np.int64)
    # The j-th failed line (0-based) comes before row r when failed[j] - base - j <= r.
    starts = failed - base - np.arange(len(failed), dtype=np.int64)
    at, counts = np.unique(starts, return_counts=True)
    if len(at) <= MAX_STEPS:
        return Lines(base, tuple(zip(at.tolist(), counts.tolist(), strict=True)))

    def dense() -> Iterator[np.ndarray]:
        for r in range(0, rows, BATCH_ROWS):
            ids = np.arange(r, min(r + BATCH_ROWS, rows), dtype=np.int64)
            yield base + ids + np.searchsorted(starts, ids, side="right")

    return Lines(base, dense=dense)


def mapped(lines: np.ndarray, base: int, dropped: list[int]) -> Lines:
    """Lines from the line of every staged row (by row id), of which the rows `dropped` will
    not be in the copy: steps when they are few, else dense."""
    if len(lines) == 0:
        return Lines(base)
    offsets = lines.astype(np.int64) - base - np.arange(len(lines), dtype=np.int64)
    change = np.flatnonzero(np.diff(offsets)) + 1
    first = int(offsets[0])
    if len(change) + (first != 0) <= MAX_STEPS:
        steps = [(0, first)] if first else []
        steps += [(int(i), int(offsets[i] - offsets[i - 1])) for i in change]
        return Lines(base, tuple(steps))
    kept = np.delete(lines, dropped) if dropped else lines

    def dense() -> Iterator[np.ndarray]:
        for start in range(0, len(kept), BATCH_ROWS):
            yield kept[start : start + BATCH_ROWS].astype(np.int64)

    return Lines(base, dense=dense)


def data_lines(
    path: Path, size: int, header_end: int, newlines_after: int, nl: bytes
) -> tuple[int, int]:
    """(lines, blank lines at the end) after the header: `newlines_after` is the count of `nl`
    from `header_end` on. A last line without a line break counts; the blank lines at the end
    (which a file of several columns does not read as records) are counted apart."""
    if header_end >= size:
        return 0, 0
    with path.open("rb") as f:
        back = min(size - header_end, CHUNK_BYTES)
        f.seek(size - back)
        tail = f.read(back)
    ends_with_break = tail.endswith(nl)
    lines = newlines_after + (0 if ends_with_break else 1)
    stripped = tail.rstrip(b"\r\n")
    trailing = tail[len(stripped) :].count(nl)
    if not stripped and back == size - header_end:  # nothing but line breaks after the header
        return lines, lines
    blank = max(trailing - 1, 0) if ends_with_break else trailing
    return lines, blank


def scan_records(
    path: Path,
    start: int,
    end: int,
    first_line: int,
    dialect: Dialect,
    cuts: list[int],
    max_delimiters: int,
) -> Records:
    """The records of the bytes [start, end) (`first_line` is the line at `start`); a cut is
    an offset where a record must end (DuckDB read the file in segments there)."""
    nl = dialect.newline[0]
    quote = dialect.quote[0] if dialect.quote else None
    escape = dialect.escape[0] if dialect.escape and dialect.escape != dialect.quote else None
    delimiter = dialect.delimiter[0]
    found_lines: list[np.ndarray] = []
    found_delims: list[np.ndarray] = []
    found_blank: list[np.ndarray] = []
    wide: list[tuple[int, int, int]] = []
    line = first_line
    bounds = sorted({start, end, *(c for c in cuts if start < c < end)})
    with path.open("rb") as f:
        for seg_start, seg_end in pairwise(bounds):
            f.seek(seg_start)
            rec_start, rec_line, rec_delims, parity, prev = seg_start, line, 0, 0, 0
            offset = seg_start
            while offset < seg_end:
                chunk = f.read(min(SCAN_BYTES, seg_end - offset))
                if not chunk:
                    break
                a = np.frombuffer(chunk, np.uint8)
                breaks = np.flatnonzero(a == nl)
                quotes = np.flatnonzero(a == quote) if quote is not None else breaks[:0]
                if escape is not None and len(quotes):
                    before = a[np.maximum(quotes - 1, 0)]
                    if quotes[0] == 0:
                        before[0] = prev
                    quotes = quotes[before != escape]
                delims = np.flatnonzero(a == delimiter)
                ends = breaks[((parity + np.searchsorted(quotes, breaks)) & 1) == 0]
                outside = delims[((parity + np.searchsorted(quotes, delims)) & 1) == 0]
                if len(ends):
                    upto = np.searchsorted(outside, ends)
                    per = np.diff(upto, prepend=0)
                    per[0] += rec_delims
                    index = np.searchsorted(breaks, ends)
                    starts = np.concatenate(([rec_start], offset + ends[:-1] + 1))
                    starts_line = np.concatenate(([rec_line], line + index[:-1] + 1))
                    length = offset + ends - starts
                    last = np.where(ends > 0, a[np.maximum(ends - 1, 0)], prev)
                    blank = (length == 0) | ((length == 1) & (last == 13))
                    found_lines.append(starts_line)
                    found_delims.append(np.minimum(per, np.iinfo(np.int32).max).astype(np.int32))
                    found_blank.append(blank)
                    for i in np.flatnonzero(per > max_delimiters):
                        wide.append((int(starts_line[i]), int(starts[i]), int(offset + ends[i])))
                    rec_start = offset + int(ends[-1]) + 1
                    rec_line = line + int(index[-1]) + 1
                    rec_delims = len(outside) - int(upto[-1])
                else:
                    rec_delims += len(outside)
                parity = (parity + len(quotes)) & 1
                line += len(breaks)
                prev = int(a[-1])
                offset += len(chunk)
            if rec_start < seg_end:  # the last record of the segment, without a line break
                stop = seg_end - 1 if prev == nl else seg_end
                found_lines.append(np.array([rec_line], dtype=np.int64))
                found_delims.append(np.array([rec_delims], dtype=np.int32))
                found_blank.append(np.array([stop == rec_start]))
                if rec_delims > max_delimiters:
                    wide.append((rec_line, rec_start, stop))
    if not found_lines:
        empty = np.zeros(0, dtype=np.int64)
        return Records(empty, empty.astype(np.int32), empty.astype(bool), wide)
    return Records(
        np.concatenate(found_lines).astype(np.int64),
        np.concatenate(found_delims),
        np.concatenate(found_blank),
        wide,
    )


def match_rows(
    records: Records,
    failed_lines: list[int],
    rows: int,
    one_column: bool,
    fields: int,
    path: Path,
    newline: bytes,
) -> tuple[np.ndarray, list[Overlong]] | None:
    """The line of each staged row and the rows with more fields than the header, when the
    records found are the staged rows and the failed ones, one for one (else None)."""
    keep = np.ones(len(records.lines), dtype=bool) if one_column else ~records.blank
    lines, delims = records.lines[keep], records.delimiters[keep]
    failed = np.asarray(failed_lines, dtype=np.int64)
    is_failed = np.isin(lines, failed)
    if int(is_failed.sum()) != len(failed) or len(lines) - len(failed) != rows:
        return None
    good, good_delims = lines[~is_failed], delims[~is_failed]
    where = {line: (start, end) for line, start, end in records.wide}
    overlong = []
    with path.open("rb") as f:
        for row in np.flatnonzero(good_delims > fields - 1):
            line = int(good[row])
            if line not in where:
                return None
            start, end = where[line]
            f.seek(start)
            raw = f.read(min(end - start, RAW_TEXT_LIMIT + 4))
            text = raw.decode("utf-8", "ignore").removesuffix("\r")
            if newline == b"\n":
                text = text.replace("\r\n", "\n")
            overlong.append(Overlong(int(row), line, text, end - start, int(good_delims[row]) + 1))
    return good, overlong
