"""Parquet: the input reader, and the summary read back from every Parquet copy."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.domain.records import ColumnInfo
from services.processing.datasets.common import (
    LINE_COLUMN,
    NAMES_KEY,
    PREVIEW_ROWS,
    PREVIEW_TEXT_CHARS,
    STAGE,
    Column,
    DatasetUnusable,
    IngestResult,
    Lines,
    columns_of,
    describe,
    first_line,
    ident,
    lit,
    stage,
    write_copy,
)
from services.processing.json_values import json_safe

MAGIC = b"PAR1"


def convert(con: duckdb.DuckDBPyConnection, source: Path, parquet_out: Path) -> None:
    """Rewrite a Parquet file as the typed copy (LZ4, fixed row groups); no failed rows.

    A row's line is its index + 1. Column names keep their case (DuckDB reads "a" and "A" as
    a and A_1; the names come from the file's schema). A date or timestamp column holding an
    infinite value is written as text, as ingest does for CSV: no later step converts it."""
    with source.open("rb") as f:
        head = f.read(4)
        f.seek(max(source.stat().st_size - 4, 0))
        tail = f.read(4)
    if head != MAGIC or tail != MAGIC:
        where = "start" if head != MAGIC else "end"
        raise DatasetUnusable(
            f"not a Parquet file: the PAR1 magic bytes are missing at the {where} of the file"
        )
    relation = f"read_parquet({lit(source)})"
    try:  # reads only the footer of a local file: any error is the file's
        described = describe(con, relation)
    except duckdb.Error as exc:
        raise DatasetUnusable(f"not a readable Parquet file: {first_line(exc, source)}") from None
    columns = columns_of(described, _own_names(source))
    # file_row_number numbers the rows as the file holds them; a column of that name hides it.
    numbered = all(name.lower() != "file_row_number" for name, _ in described)
    try:
        if numbered:
            relation = f"read_parquet({lit(source)}, file_row_number = true)"
            _text_if_infinite(con, relation, columns)
            write_copy(con, columns, parquet_out, Lines(1, index="file_row_number"), relation)
        else:
            stage(con, relation)
            _text_if_infinite(con, STAGE, columns)
            write_copy(con, columns, parquet_out, Lines(1))
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        # corrupt pages; an IOException (disk full while writing, ...) is not the data's fault
        raise DatasetUnusable(f"not a readable Parquet file: {first_line(exc, source)}") from None


def _own_names(source: Path) -> list[str] | None:
    """The file's top-level column names as written (None when pyarrow cannot read its
    schema, which it refuses past 100 levels of nesting)."""
    try:
        return [str(name) for name in pq.read_schema(source).names]
    except (pa.ArrowException, OSError):
        return None


def _text_if_infinite(con: duckdb.DuckDBPyConnection, relation: str, columns: list[Column]) -> None:
    """Write as text the date and timestamp columns that hold an infinite value."""
    dated = [c for c in columns if c.kind.upper().startswith(("DATE", "TIMESTAMP"))]
    if not dated:
        return
    checks = ", ".join(f"bool_or(isinf({ident(c.source)}))" for c in dated)
    found = con.execute(f"SELECT {checks} FROM {relation}").fetchone()
    assert found is not None  # an aggregate without GROUP BY returns one row
    for c, infinite in zip(dated, found, strict=True):
        if infinite:
            c.target = "VARCHAR"


_INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip


def friendly_type(duckdb_type: str) -> str:
    """Map a DuckDB type to the type name the API shows."""
    t = duckdb_type.upper()
    if t in _INTEGER_TYPES:
        return "integer"
    if t in ("FLOAT", "DOUBLE"):
        return "float"
    if t.startswith("DECIMAL"):
        return "decimal"
    if t == "VARCHAR":
        return "string"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    if t.startswith("TIME"):
        return "time"
    if t in ("BOOLEAN", "DATE"):
        return t.lower()
    return duckdb_type.lower()


def summarize(
    con: duckdb.DuckDBPyConnection, parquet: Path, failed_count: int, failed_path: Path | None
) -> IngestResult:
    """Row count, column types and null counts, and the preview, from the Parquet copy.

    A column's null count is its SQL NULLs plus, in a FLOAT or DOUBLE column, its NaN values:
    what pandas' isna() counts, and what the metrics processor reports. The counts come from
    the footer: the row count, and the null and NaN counts DuckDB records for every column
    chunk (exact: counted while writing). Only columns without such counts (INTERVAL, nested
    types; floats written without a NaN count) are scanned, in one aggregate query over those
    columns.
    """
    relation = f"read_parquet({lit(parquet)})"
    # The copy's last column is the line number, which is not one of the dataset's.
    columns = [(n, k) for n, k in describe(con, relation) if n != LINE_COLUMN]
    row_count, nulls = _footer_counts(con, parquet, columns)
    missing = [(name, kind) for name, kind in columns if name not in nulls]
    if missing:
        # NaN counted in the aggregate, never in a WHERE: a filter pushed into the scan is
        # pruned by row-group statistics, which leave NaN out of their min and max.
        counted = ", ".join(
            f"count(*) - count({ident(name)})"
            + (
                f" + count(*) FILTER (WHERE isnan({ident(name)}))"
                if kind.upper() in _FLOAT_TYPES
                else ""
            )
            for name, kind in missing
        )
        scanned = con.execute(f"SELECT {counted} FROM {relation}").fetchone()
        assert scanned is not None
        nulls.update(zip([name for name, _ in missing], scanned, strict=True))
    preview_cols = ", ".join(
        f"CASE WHEN length({ident(n)}::VARCHAR) > {PREVIEW_TEXT_CHARS} "
        f"THEN left({ident(n)}::VARCHAR, {PREVIEW_TEXT_CHARS}) || '…' "
        f"ELSE {ident(n)}::VARCHAR END AS {ident(n)}"
        if t in ("VARCHAR", "JSON")
        else ident(n)
        for n, t in columns
    )
    rows = con.execute(f"SELECT {preview_cols} FROM {relation} LIMIT {PREVIEW_ROWS}").fetchall()
    names = _dataset_names(con, parquet, [name for name, _ in columns])
    return IngestResult(
        row_count=row_count,
        columns=[
            ColumnInfo(name=shown, type=friendly_type(kind), null_count=nulls[name])
            for shown, (name, kind) in zip(names, columns, strict=True)
        ],
        failed_row_count=failed_count,
        failed_rows_path=failed_path,
        preview=[{k: json_safe(v) for k, v in zip(names, row, strict=True)} for row in rows],
    )


def _dataset_names(con: duckdb.DuckDBPyConnection, parquet: Path, stored: list[str]) -> list[str]:
    """The dataset's names of the copy's columns, from its footer (NAMES_KEY), else `stored`."""
    found = con.execute(
        "SELECT decode(value) FROM parquet_kv_metadata(?) WHERE decode(key) = ?",
        [str(parquet), NAMES_KEY],
    ).fetchone()
    if found is None:
        return stored
    names = json.loads(found[0])
    return names if isinstance(names, list) and len(names) == len(stored) else stored


# Types stored as one leaf column whose chunk statistics hold the column's null count.
_FLAT_TYPES = re.compile(
    r"(BOOLEAN|U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL\(\d+,\s*\d+\)"
    r"|VARCHAR|JSON|BLOB|UUID|DATE|TIME|TIME WITH TIME ZONE|TIMESTAMP(_S|_MS|_NS)?"
    r"|TIMESTAMP WITH TIME ZONE)"
)
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}  # whose NaN values count as nulls


def _footer_counts(
    con: duckdb.DuckDBPyConnection, parquet: Path, columns: list[tuple[str, str]]
) -> tuple[int, dict[str, int]]:
    """Row count, and the null counts (NaN included) the footer holds for every row group of a
    flat column.

    A column is left out when its type is not flat, when a row group has no null count for
    it (or, for a float column, no NaN count), or when its name is not the path of exactly one
    leaf per row group (a nested field can have a path that reads like another column's name).
    """
    meta = con.execute(
        "SELECT num_rows, num_row_groups FROM parquet_file_metadata(?)", [str(parquet)]
    ).fetchone()
    assert meta is not None
    row_count, row_groups = meta
    by_path = _chunk_stats(con, parquet)
    nulls: dict[str, int] = {}
    for name, kind in columns:
        if not _FLAT_TYPES.fullmatch(kind.upper()):
            continue
        if row_groups == 0:
            nulls[name] = 0
            continue
        chunks, null_counted, null_total, nan_counted, nan_total = by_path.get(
            name, (0, 0, None, 0, None)
        )
        if (chunks, null_counted) != (row_groups, row_groups):
            continue
        if kind.upper() not in _FLOAT_TYPES:
            nulls[name] = int(null_total)
        elif nan_counted == row_groups:
            nulls[name] = int(null_total) + int(nan_total)
    return int(row_count), nulls


def _chunk_stats(con: duckdb.DuckDBPyConnection, parquet: Path) -> dict[str, tuple[Any, ...]]:
    """Per leaf path: chunks, chunks with a null count, their sum, chunks with a NaN count,
    their sum."""
    query = (
        "SELECT path_in_schema, count(*), count(stats_null_count), sum(stats_null_count), {nan} "
        "FROM parquet_metadata(?) GROUP BY path_in_schema"
    )
    try:
        rows = con.execute(
            query.format(nan="count(stats_nan_count), sum(stats_nan_count)"), [str(parquet)]
        ).fetchall()
    except duckdb.BinderException:  # a DuckDB before stats_nan_count: floats are scanned
        rows = con.execute(query.format(nan="0, NULL"), [str(parquet)]).fetchall()
    return {path: tuple(rest) for path, *rest in rows}
