"""Parquet: the input reader, and the summary read back from every Parquet copy."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from schemas.domain.records import ColumnInfo
from services.processing.datasets.common import (
    PREVIEW_ROWS,
    PREVIEW_TEXT_CHARS,
    DatasetUnusable,
    IngestResult,
    copy_to_parquet,
    describe,
    first_line,
    ident,
    lit,
)
from services.processing.json_values import json_safe

MAGIC = b"PAR1"


def convert(con: duckdb.DuckDBPyConnection, source: Path, parquet_out: Path) -> None:
    """Rewrite a Parquet file as the typed copy (LZ4, fixed row groups); no failed rows."""
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
        columns = describe(con, relation)
    except duckdb.Error as exc:
        raise DatasetUnusable(f"not a readable Parquet file: {first_line(exc, source)}") from None
    try:
        copy_to_parquet(con, relation, parquet_out, columns)
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        # corrupt pages; an IOException (disk full while writing, ...) is not the data's fault
        raise DatasetUnusable(f"not a readable Parquet file: {first_line(exc, source)}") from None


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

    The counts come from the footer: the row count, and the null count DuckDB records for
    every column chunk (exact: counted while writing). Only columns without such a count
    (INTERVAL, nested types) are scanned, in one aggregate query over those columns.
    """
    relation = f"read_parquet({lit(parquet)})"
    columns = describe(con, relation)
    row_count, nulls = _footer_counts(con, parquet, columns)
    missing = [name for name, _ in columns if name not in nulls]
    if missing:
        counted = ", ".join(f"count(*) - count({ident(name)})" for name in missing)
        scanned = con.execute(f"SELECT {counted} FROM {relation}").fetchone()
        assert scanned is not None
        nulls.update(zip(missing, scanned, strict=True))
    preview_cols = ", ".join(
        f"CASE WHEN length({ident(n)}::VARCHAR) > {PREVIEW_TEXT_CHARS} "
        f"THEN left({ident(n)}::VARCHAR, {PREVIEW_TEXT_CHARS}) || '…' "
        f"ELSE {ident(n)}::VARCHAR END AS {ident(n)}"
        if t in ("VARCHAR", "JSON")
        else ident(n)
        for n, t in columns
    )
    rows = con.execute(f"SELECT {preview_cols} FROM {relation} LIMIT {PREVIEW_ROWS}").fetchall()
    names = [name for name, _ in columns]
    return IngestResult(
        row_count=row_count,
        columns=[
            ColumnInfo(name=name, type=friendly_type(kind), null_count=nulls[name])
            for name, kind in columns
        ],
        failed_row_count=failed_count,
        failed_rows_path=failed_path,
        preview=[{k: json_safe(v) for k, v in zip(names, row, strict=True)} for row in rows],
    )


# Types stored as one leaf column whose chunk statistics hold the column's null count.
_FLAT_TYPES = re.compile(
    r"(BOOLEAN|U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL\(\d+,\s*\d+\)"
    r"|VARCHAR|JSON|BLOB|UUID|DATE|TIME|TIME WITH TIME ZONE|TIMESTAMP(_S|_MS|_NS)?"
    r"|TIMESTAMP WITH TIME ZONE)"
)


def _footer_counts(
    con: duckdb.DuckDBPyConnection, parquet: Path, columns: list[tuple[str, str]]
) -> tuple[int, dict[str, int]]:
    """Row count and the null counts the footer holds for every row group of a flat column.

    A column is left out when its type is not flat, when a row group has no null count for
    it, or when its name is not the path of exactly one leaf per row group (a nested field
    can have a path that reads like another column's name).
    """
    meta = con.execute(
        "SELECT num_rows, num_row_groups FROM parquet_file_metadata(?)", [str(parquet)]
    ).fetchone()
    assert meta is not None
    row_count, row_groups = meta
    stats = con.execute(
        "SELECT path_in_schema, count(*), count(stats_null_count), sum(stats_null_count) "
        "FROM parquet_metadata(?) GROUP BY path_in_schema",
        [str(parquet)],
    ).fetchall()
    by_path = {path: (chunks, counted, total) for path, chunks, counted, total in stats}
    nulls: dict[str, int] = {}
    for name, kind in columns:
        if not _FLAT_TYPES.fullmatch(kind.upper()):
            continue
        if row_groups == 0:
            nulls[name] = 0
        elif by_path.get(name, (0, 0, None))[:2] == (row_groups, row_groups):
            nulls[name] = int(by_path[name][2])
    return int(row_count), nulls
