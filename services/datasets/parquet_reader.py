"""Parquet: the input reader, and the summary read back from every Parquet copy."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from schemas.records import ColumnInfo
from services.datasets.ingest import (
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

MAGIC = b"PAR1"


def convert(con: duckdb.DuckDBPyConnection, source: Path, parquet_out: Path) -> None:
    """Rewrite a Parquet file as the typed copy (zstd, fixed row groups); no failed rows."""
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
    """Row count, column types and null counts (one aggregate query) and the preview."""
    relation = f"read_parquet({lit(parquet)})"
    columns = describe(con, relation)
    nulls = ", ".join(f"count(*) - count({ident(name)})" for name, _ in columns)
    counts = con.execute(f"SELECT count(*), {nulls} FROM {relation}").fetchone()
    assert counts is not None
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
        row_count=counts[0],
        columns=[
            ColumnInfo(name=name, type=friendly_type(kind), null_count=n)
            for (name, kind), n in zip(columns, counts[1:], strict=True)
        ],
        failed_row_count=failed_count,
        failed_rows_path=failed_path,
        preview=[{k: json_safe(v) for k, v in zip(names, row, strict=True)} for row in rows],
    )


def json_safe(value: Any) -> Any:
    """A value orjson/json can serialise: ISO strings for times, str for decimals, None for NaN."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)
