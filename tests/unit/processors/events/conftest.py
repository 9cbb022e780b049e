"""Generated event tables with known structure, written like the typed copy."""

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from schemas.domain.records import ColumnInfo
from tests.unit.processors.conftest import write_parquet

START = datetime(2024, 1, 1)  # a Monday


def period_starts(unit: str, n: int) -> list[datetime]:
    """The first instants of n consecutive periods from START."""
    if unit == "hour":
        return [START + timedelta(hours=i) for i in range(n + 1)]
    if unit == "day":
        return [START + timedelta(days=i) for i in range(n + 1)]
    if unit == "week":
        return [START + timedelta(weeks=i) for i in range(n + 1)]
    return [datetime(2024 + (i // 12), i % 12 + 1, 1) for i in range(n + 1)]


def events(
    rng: np.random.Generator, unit: str, counts: dict[Any, list[int]], *, tail_days: int = 0
) -> pd.DataFrame:
    """Rows `at`, `grp`: counts[group][i] events at random instants of period i; `tail_days`
    more days of a few events after the last period (a partial period)."""
    bounds = period_starts(unit, max(len(c) for c in counts.values()))
    stamps, groups = [], []
    for group, series in counts.items():
        for i, n in enumerate(series):
            span = (bounds[i + 1] - bounds[i]).total_seconds()
            offsets = rng.integers(0, int(span), n)
            stamps += [bounds[i] + timedelta(seconds=int(s)) for s in offsets]
            groups += [group] * n
        if tail_days:
            offsets = rng.integers(0, tail_days * 86400, 3)
            stamps += [bounds[len(series)] + timedelta(seconds=int(s)) for s in offsets]
            groups += [group] * 3
    order = rng.permutation(len(stamps))
    return pd.DataFrame(
        {"at": pd.Series(stamps, dtype="datetime64[us]").iloc[order].to_numpy(),
         "grp": pd.Series(groups, dtype=object).iloc[order].to_numpy()}
    )  # fmt: skip


def to_table(df: pd.DataFrame) -> pa.Table:
    """The frame as Arrow, strings and timestamps as the typed copy holds them."""
    arrays = {}
    for name in df.columns:
        values = df[name]
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            texts = [None if pd.isna(v) else v for v in values.tolist()]
            arrays[name] = pa.array(texts, type=pa.string())
        elif str(values.dtype).startswith("datetime64"):
            stamps = values.to_numpy().astype("datetime64[us]")
            arrays[name] = pa.array(stamps, type=pa.timestamp("us"), mask=np.isnat(stamps))
        else:
            arrays[name] = pa.array(values.to_numpy())
    return pa.table(arrays)


FRIENDLY = {"string": "string", "double": "float", "int64": "integer", "date32[day]": "date"}


def columns_info(table: pa.Table) -> list[ColumnInfo]:
    """The dataset schema as ingest records it."""
    infos = []
    for field in table.schema:
        kind = "timestamp" if pa.types.is_timestamp(field.type) else FRIENDLY[str(field.type)]
        column = table[field.name]
        nulls = column.null_count
        if pa.types.is_floating(field.type):
            nulls += int(np.isnan(column.to_numpy(zero_copy_only=False)).sum())
        infos.append(ColumnInfo(name=field.name, type=kind, null_count=nulls))
    return infos


Written = Callable[[pa.Table], tuple[Path, list[ColumnInfo]]]


@pytest.fixture
def written(tmp_path: Path) -> Written:
    """Write a table as a Parquet copy; its path and schema."""
    counter = iter(range(1000))

    def write(table: pa.Table) -> tuple[Path, list[ColumnInfo]]:
        path = write_parquet(table, tmp_path / f"events{next(counter)}.parquet")
        return path, columns_info(table)

    return write
