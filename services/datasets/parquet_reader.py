"""Parquet input: checked for the PAR1 magic, then rewritten so every copy is uniform."""

from __future__ import annotations

from pathlib import Path

import duckdb

from services.datasets.ingest import DatasetUnusable, copy_to_parquet, first_line, lit

MAGIC = b"PAR1"


def convert(con: duckdb.DuckDBPyConnection, source: Path, parquet_out: Path) -> None:
    """Rewrite a Parquet file as the typed copy (zstd, fixed row groups); no failed rows."""
    with source.open("rb") as f:
        head = f.read(4)
        f.seek(max(source.stat().st_size - 4, 0))
        tail = f.read(4)
    if head != MAGIC or tail != MAGIC or source.stat().st_size < 12:
        where = "start" if head != MAGIC else "end"
        raise DatasetUnusable(
            f"not a Parquet file: the PAR1 magic bytes are missing at the {where} of the file"
        )
    try:
        copy_to_parquet(con, f"read_parquet({lit(source)})", parquet_out)
    except (
        duckdb.InvalidInputException,
        duckdb.IOException,
        duckdb.ConversionException,
        duckdb.BinderException,
    ) as exc:
        raise DatasetUnusable(f"not a readable Parquet file: {first_line(exc)}") from None
