"""JSON (array document) and NDJSON to Parquet.

- fmt json whose first non-blank byte is '[' is one array of objects, read by DuckDB
  (format='array'). Any error makes the dataset unusable; the message adds orjson's line
  and column when the file is small enough (ORJSON_CHECK_BYTES) to parse a second time.
- Anything else, and fmt ndjson always, is one object per line. DuckDB first reads the
  file directly (the common, clean case costs no Python pass); if that fails, the file is
  read line by line with orjson: bad lines become failed rows, good ones go to a clean
  file that DuckDB reads. Blank lines are skipped. Line numbers are physical, 1-based.
- Types come from every object (sample_size=-1): with a sample, DuckDB silently drops
  keys first seen after it and fails the whole read on a later value of another type.
  Reading every object costs somewhat more than a sample; the orjson pass costs more than
  DuckDB's read, which is why it runs only for files with bad lines.
- DuckDB renames keys that differ only in case ("A" -> "A_1"). It cannot make a column
  of an empty key: such a line is a failed row (in an array: unusable). A key repeated
  inside one object fails DuckDB's whole read: unusable, naming the line. DuckDB counts
  records, not lines, in its messages; they are mapped back to physical lines here.
- Lines over 16 MiB are failed rows in the line-by-line pass (never held whole); DuckDB's
  direct read was seen to accept a longer line despite maximum_object_size.
- DuckDB refuses a record nested deeper than 128 levels (a scalar or an empty container is
  one level, a container one more than its deepest value) and fails the whole read; orjson
  stops at 1024. Such a line is a failed row naming the limit (only lines long enough, and
  with brackets enough, to be that deep are measured); in an array document the element
  is named.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import numpy as np
import orjson

from schemas.domain.records import DatasetFormat
from services.processing.datasets.column_types import (
    WIDE_INTEGERS,
    refine,
    suspect_temporal,
    temporal_overrides,
)
from services.processing.datasets.common import (
    BOM,
    CHUNK_BYTES,
    MAX_ROW_BYTES,
    RAW_TEXT_LIMIT,
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
    write_copy,
)
from services.processing.datasets.lines import counted
from services.processing.datasets.parquet_patch import PatchError, row_group_sizes

ORJSON_CHECK_BYTES = 32 * 1024 * 1024  # parsing builds Python objects, many times the file
MAX_DEPTH = 128  # DuckDB's "maximum recursion depth" for one record
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep (the limit)"
_MIN_DEEP_LINE = 2 * MAX_DEPTH  # bytes: a shorter line cannot hold MAX_DEPTH + 1 levels
_ORJSON_DEPTH = "depth limit exceeded"  # orjson's message past its own 1024 levels
_OPTIONS = (
    "records='true', sample_size=-1, map_inference_threshold=-1, "
    f"maximum_object_size={MAX_ROW_BYTES}"
)
_DATA_ERRORS = (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.BinderException)
_LINE_REF = re.compile(r"(in line |record/value )(\d+)")
_BLANKS = np.array([32, 9, 13, 10], dtype=np.uint8)  # bytes of a line DuckDB skips as blank


def convert(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    fmt: DatasetFormat,
    scan: TextScan,
    parquet_out: Path,
    workdir: Path,
    failed: FailedRowsWriter,
    row_cap: int | None = None,
) -> None:
    """Write the objects of a JSON array or NDJSON file to `parquet_out`, bad lines to `failed`;
    with `row_cap`, DuckDB's reads stop after that many objects."""
    if fmt is DatasetFormat.json and scan.first_char == b"[":
        relation = f"read_json({lit(source)}, format='array', {_OPTIONS})"
        try:
            _stage_and_write(con, relation, parquet_out, row_cap, lambda rows: Lines(1))
        except _DATA_ERRORS as exc:
            raise DatasetUnusable(_array_problem(source, first_line(exc, source))) from None
        return
    try:
        _stage_and_write(
            con,
            _ndjson(source),
            parquet_out,
            row_cap,
            lambda rows: _direct_lines(source, scan, rows),
        )
        return
    except _DATA_ERRORS:
        pass  # some line is bad: sort them out below
    clean = workdir / "clean.ndjson"
    good, has_fields, skipped = _split_lines(source, clean, failed)
    if failed.first is not None and not good:
        line, reason = failed.first
        hint = ""
        if scan.first_char == b"[":
            hint = " (the file starts with '[': upload a JSON array with format json)"
        elif fmt is DatasetFormat.json:
            hint = " (JSON must be an array of objects, or one object per line)"
        raise DatasetUnusable(
            f"no line could be parsed as a JSON object; first error at line {line}: {reason}{hint}"
        )
    if not has_fields:
        raise DatasetUnusable("no JSON object has any field")
    try:
        _stage_and_write(
            con,
            _ndjson(clean),
            parquet_out,
            row_cap,
            lambda rows: counted(skipped.tolist(), 1, rows),
        )
    except _DATA_ERRORS as exc:
        message = first_line(exc).replace(str(clean), source.name)
        message = _LINE_REF.sub(lambda m: m[1] + str(_original_line(int(m[2]), skipped)), message)
        raise DatasetUnusable(f"could not convert the JSON lines: {message}") from None
    finally:
        clean.unlink(missing_ok=True)


def _stage_and_write(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    parquet_out: Path,
    row_cap: int | None,
    lines: Callable[[int], Lines],
) -> None:
    """Write the copy of a relation: straight, its line numbers joined afterwards, unless a
    column needs the staged way (_staged)."""
    if _write_directly(con, relation, parquet_out, row_cap, lines):
        return
    _staged(con, relation, parquet_out, row_cap, lines)


def _write_directly(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    parquet_out: Path,
    row_cap: int | None,
    lines: Callable[[int], Lines],
) -> bool:
    """COPY the relation straight to the copy; False, with nothing kept, when a column needs
    the staged way: integers past int64, or a date column holding a special word."""
    columns = columns_of(describe(con, relation))
    if any(c.kind.upper() in WIDE_INTEGERS for c in columns):
        return False
    for c in columns:
        if c.kind == '"NULL"':
            c.target = "DOUBLE"  # a key that is always null: numeric-compatible nulls
    limit = "" if row_cap is None else f" LIMIT {int(row_cap)}"
    select = select_list(columns, lambda c: ident(c.source))
    con.execute(
        f"COPY (SELECT {', '.join(select)} FROM {relation}{limit}) TO {lit(parquet_out)} "
        f"({copy_options(columns)})"
    )
    rows = sum(row_group_sizes(parquet_out))
    if row_cap is not None and rows >= row_cap:  # over the row limit: only the count matters
        return True
    copy = f"read_parquet({lit(parquet_out)})"
    suspects = suspect_temporal(con, columns, copy, lambda c: ident(c.stored))
    if temporal_overrides(con, suspects, lambda text: _as_text(relation, columns, text), [""]):
        return False
    try:
        join_lines(parquet_out, lines(rows), [], parquet_out.parent)
    except PatchError:
        return False
    return True


def _staged(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    parquet_out: Path,
    row_cap: int | None,
    lines: Callable[[int], Lines],
) -> None:
    """Read the relation into the staging table and write the copy, its columns typed by the
    rules of column_types (a date column holding a special word read again as text)."""
    described = stage(con, relation, row_cap)
    columns = columns_of(described)
    rows = staged_rows(con)
    if row_cap is not None and rows >= row_cap:  # over the row limit: only the count matters
        write_copy(con, columns, parquet_out, Lines(None))
        return
    suspects = suspect_temporal(con, columns)
    if suspects:
        overrides = temporal_overrides(
            con, suspects, lambda text: _as_text(relation, columns, text), [""]
        )
        if overrides:
            kinds = {c.source: overrides.get(c.source, c.kind) for c in columns}
            described = stage(con, _typed(relation, columns, kinds), row_cap)
            columns = columns_of(described)
    refine(con, columns, [""], rows, numbers_in_text=False)
    write_copy(con, columns, parquet_out, lines(rows))


def _typed(relation: str, columns: list[Column], kinds: dict[str, str]) -> str:
    """The read_json relation with each column's type given (the keys are DuckDB's names,
    which are the JSON keys unless two differ only in case)."""
    struct = ", ".join(f"{lit(c.source)}: {lit(kinds[c.source])}" for c in columns)
    return relation[: relation.rindex(")")] + f", columns={{{struct}}})"


def _as_text(relation: str, columns: list[Column], text: list[Column]) -> str:
    """The relation with the `text` columns read as text."""
    sources = {c.source for c in text}
    return _typed(
        relation, columns, {c.source: "VARCHAR" if c.source in sources else c.kind for c in columns}
    )


def _direct_lines(source: Path, scan: TextScan, rows: int) -> Lines:
    """Lines of the rows of an NDJSON file DuckDB read whole: the file's lines less the blank
    ones (which it skips); NULL when they do not add up to the rows."""
    total = scan.newlines + (0 if _ends_with(source, b"\n") else 1)
    if total == rows:
        return Lines(1)
    blank = _blank_lines(source)
    if total - len(blank) != rows:
        return Lines(None)
    return counted(blank, 1, rows)


def _ends_with(path: Path, suffix: bytes) -> bool:
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(size - len(suffix), 0))
        return f.read() == suffix


def _blank_lines(path: Path) -> list[int]:
    """The 1-based numbers of the lines holding nothing but spaces, tabs and CRs."""
    blank: list[int] = []
    line = 1
    pending = True  # the current line has shown nothing but blanks so far
    last = b""
    with path.open("rb") as f:
        while chunk := f.read(16 * CHUNK_BYTES):
            a = np.frombuffer(chunk, np.uint8)
            breaks = np.flatnonzero(a == 10)
            filled = np.flatnonzero(~np.isin(a, _BLANKS))
            # a line is blank when no non-blank byte lies between its start and its break
            starts = np.concatenate(([0], breaks[:-1] + 1)) if len(breaks) else breaks
            seen = np.searchsorted(filled, breaks) - np.searchsorted(filled, starts)
            empty = seen == 0
            if len(breaks):
                empty[0] = empty[0] and pending
                blank.extend((line + np.flatnonzero(empty)).tolist())
                pending = int(np.searchsorted(filled, breaks[-1] + 1)) == len(filled)
            else:
                pending = pending and len(filled) == 0
            line += len(breaks)
            last = chunk[-1:]
    if pending and last not in (b"", b"\n"):  # a last line without a break, of blanks only
        blank.append(line)
    return blank


def _ndjson(path: Path) -> str:
    return f"read_json({lit(path)}, format='newline_delimited', {_OPTIONS})"


def _array_problem(source: Path, duckdb_message: str) -> str:
    """Say what is wrong with a JSON array document, with a position when orjson finds one."""
    if source.stat().st_size > ORJSON_CHECK_BYTES:
        return f"invalid JSON array: {duckdb_message}"
    try:
        document = orjson.loads(source.read_bytes().removeprefix(BOM))
    except orjson.JSONDecodeError as exc:
        message = TOO_DEEP if exc.msg == _ORJSON_DEPTH else exc.msg
        return f"invalid JSON at line {exc.lineno}, column {exc.colno}: {message}"
    deep = "recursion depth" in duckdb_message
    for i, item in enumerate(document, 1):
        if not isinstance(item, dict):
            return f"expected a JSON array of objects, found {_kind(item)} at element {i}"
        if "" in item:
            return f'element {i} has an empty key ""; every field needs a name'
        if deep and too_deep(item):
            return f"element {i} is {TOO_DEEP}"
    if not any(document):
        return "the JSON array holds no object with a field"
    return f"could not read the JSON array: {duckdb_message}"


def _maybe_deep(line: bytes, value: Any) -> bool:
    """too_deep, for a line with enough brackets to be that deep (counted in C first)."""
    return line.count(b"[") + line.count(b"{") >= MAX_DEPTH and too_deep(value)


def too_deep(value: Any) -> bool:
    """Whether a value nests deeper than MAX_DEPTH levels, counted as DuckDB does."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if type(item) is dict:
            stack.extend((child, depth + 1) for child in item.values())
        elif type(item) is list:
            stack.extend((child, depth + 1) for child in item)
    return False


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    kinds: dict[type, str] = {list: "array", str: "string", dict: "object"}
    return kinds.get(type(value), "null")


def _split_lines(source: Path, clean: Path, failed: FailedRowsWriter) -> tuple[int, bool, array]:
    """Copy the good lines to `clean`; return (good lines, any field seen, skipped line numbers)."""
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    number = good = 0
    has_fields = False
    skipped = array("q")  # line numbers not copied, to map DuckDB's record numbers back
    with source.open("rb") as f, clean.open("wb") as out:
        for block in _blocks(f):
            if isinstance(block, tuple):  # a line too long to hold: its start and size
                number += 1
                _fail(failed, number, *block)
                skipped.append(number)
                continue
            lines = block.split(b"\n")
            if block.endswith(b"\n"):
                lines.pop()
            kept = []
            for line in lines:
                number += 1
                try:
                    value = loads(line)
                except decode_error as exc:
                    if line.strip():
                        if exc.msg == _ORJSON_DEPTH:
                            reason = f"invalid JSON: {TOO_DEEP}"
                        else:
                            reason = f"invalid JSON: {exc.msg} at column {exc.colno}"
                        _fail(failed, number, line, len(line), reason)
                    skipped.append(number)
                    continue
                is_object = type(value) is dict
                deep = is_object and len(line) > _MIN_DEEP_LINE and _maybe_deep(line, value)
                if is_object and "" not in value and len(line) <= MAX_ROW_BYTES and not deep:
                    kept.append(line)
                    good += 1
                    has_fields = has_fields or bool(value)
                    continue
                if not is_object:
                    reason = f"expected a JSON object, found {_kind(value)}"
                elif "" in value:
                    reason = 'empty key "": every field needs a name'
                elif deep:
                    reason = TOO_DEEP
                else:
                    reason = _too_long(len(line))
                _fail(failed, number, line, len(line), reason)
                skipped.append(number)
            if kept:
                out.write(b"\n".join(kept) + b"\n")
    return good, has_fields, skipped


def _fail(
    failed: FailedRowsWriter, number: int, line: bytes, size: int, reason: str | None = None
) -> None:
    raw = line[: RAW_TEXT_LIMIT + 4].decode("utf-8", "ignore").rstrip("\r")
    failed.add(number, raw, reason or _too_long(size), size)


def _too_long(size: int) -> str:
    return f"line is {size} bytes long; the limit is 16 MiB"


def _blocks(f: BinaryIO) -> Iterator[bytes | tuple[bytes, int]]:
    """Runs of whole lines (BOM removed); a line over MAX_ROW_BYTES as (its start, its size)."""
    tail = bytearray()
    first = True
    while chunk := f.read(CHUNK_BYTES):
        if first:
            chunk, first = chunk.removeprefix(BOM), False
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            yield bytes(tail) + chunk[: cut + 1]
            tail = bytearray(chunk[cut + 1 :])
            continue
        tail += chunk
        if len(tail) > MAX_ROW_BYTES:  # skip to the end of this line without keeping it
            size, start = len(tail), bytes(tail[: RAW_TEXT_LIMIT + 4])
            tail = bytearray()
            while chunk := f.read(CHUNK_BYTES):
                end = chunk.find(b"\n")
                if end >= 0:
                    size += end
                    tail = bytearray(chunk[end + 1 :])
                    break
                size += len(chunk)
            yield start, size
    if tail:
        yield bytes(tail)


def _original_line(record: int, skipped: array) -> int:
    """Physical line of the record-th line of the clean file."""
    line = record
    for s in skipped:
        if s > line:
            break
        line += 1
    return line
