"""Generated datasets for the processor tests, and a StepInput factory."""

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import ColumnInfo, DatasetFormat
from services.processing.processors.base import ComputeLimits, JobCancelled, StepInput
from services.processing.processors.columns import LINE_COLUMN

ROWS = 3000
FRIENDLY = {
    pa.float64(): "float",
    pa.int64(): "integer",
    pa.string(): "string",
    pa.bool_(): "boolean",
    pa.timestamp("us"): "timestamp",
    pa.timestamp("ns"): "timestamp",
    pa.date32(): "date",
}


def _with_nulls(rng: np.random.Generator, values: np.ndarray, ratio: float) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < ratio)


def make_table(rows: int = ROWS, seed: int = 7) -> pa.Table:
    """Nulls, NaN, a constant column, ties, outliers, integers, strings, times, duplicates."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(50.0, 10.0, rows)
    normal[rng.choice(rows, 12, replace=False)] *= rng.choice([-8.0, 9.0], 12)  # outliers
    normal[[5, 17]] = np.nan  # NaN, not null: pandas treats it as missing too
    ties = np.round(rng.normal(3.0, 1.0, rows), 1)  # many equal values
    mostly_zero = np.where(rng.random(rows) < 0.8, 0.0, rng.normal(5.0, 3.0, rows))
    mostly_zero[rng.choice(rows, 3, replace=False)] = 500.0
    categories = np.array(
        [
            "delta",
            "alpha",
            "charlie",
            "bravo",
            "echo",
            "foxtrot",
            "golf",
            "hotel",
            "india",
            "juliet",
            "kilo",
            "lima",
            "mike",
        ]
    )
    # Weights with equal pairs so that top-value ties must be broken by value.
    weights = np.array([3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    cats = categories[rng.choice(len(categories), rows, p=weights / weights.sum())]
    start = datetime(2024, 1, 1)
    stamps = np.array([start + timedelta(seconds=int(s)) for s in rng.integers(0, 10**7, rows)])
    days = np.array([date(2023, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 400, rows)])
    table = pa.table(
        {
            "normal": _with_nulls(rng, normal, 0.05),
            "ties": _with_nulls(rng, ties, 0.03),
            "constant": _with_nulls(rng, np.full(rows, 7.25), 0.02),
            "mostly_zero": _with_nulls(rng, mostly_zero, 0.01),
            "count": _with_nulls(rng, rng.integers(0, 20, rows), 0.04),
            "big_int": pa.array(rng.integers(-(10**6), 10**6, rows)),
            "category": _with_nulls(rng, cats, 0.05),
            "flag": _with_nulls(rng, rng.random(rows) < 0.3, 0.02),
            "stamp": pa.array(stamps, type=pa.timestamp("us"), mask=rng.random(rows) < 0.03),
            "day": pa.array(days, type=pa.date32(), mask=rng.random(rows) < 0.03),
        }
    )
    # Exact duplicates of earlier rows, some of them rows with nulls.
    source = rng.choice(rows // 2, 40, replace=False)
    target = rng.choice(np.arange(rows // 2, rows), 40, replace=False)
    index = np.arange(rows)
    index[target] = source
    return table.take(pa.array(index))


def columns_of(table: pa.Table) -> list[ColumnInfo]:
    """The dataset schema as ingest records it (a float NaN counts as null; the hidden line
    column is not one of the dataset's columns)."""
    return [
        ColumnInfo(name=f.name, type=_friendly(f.type), null_count=_nulls(table[f.name]))
        for f in table.schema
        if f.name != LINE_COLUMN
    ]


def _friendly(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_decimal(kind):
        return "decimal"
    return FRIENDLY[kind]


def with_lines(table: pa.Table, lines: Sequence[int | None] | None = None) -> pa.Table:
    """The table with the typed copy's hidden line column (default: a header line, then one
    line per row)."""
    if lines is None:
        lines = list(range(2, table.num_rows + 2))
    return table.append_column(LINE_COLUMN, pa.array(lines, type=pa.int64()))


def _nulls(column: pa.ChunkedArray) -> int:
    nulls = int(column.null_count)
    if not pa.types.is_floating(column.type):
        return nulls
    return nulls + int(pc.sum(pc.is_nan(column)).as_py() or 0)


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write like the typed copy: row groups of 61440 rows (zstd: smaller, same values)."""
    pq.write_table(table, path, compression="zstd", row_group_size=61_440)
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ColumnInfo]]:
    table = make_table()
    path = write_parquet(table, tmp_path_factory.mktemp("data") / "data.parquet")
    return path, columns_of(table)


StepFactory = Callable[..., StepInput]


@pytest.fixture
def make_step(tmp_path: Path, dataset: tuple[Path, list[ColumnInfo]]) -> StepFactory:
    """StepInput for the generated dataset; keyword overrides for any field."""
    counter = iter(range(1000))

    def factory(**overrides: object) -> StepInput:
        output_dir = tmp_path / f"step{next(counter)}"
        output_dir.mkdir()
        path, columns = dataset
        fields: dict[str, Any] = {
            "parquet_path": path,
            "columns": columns,
            "dataset_format": DatasetFormat.csv,
            "output_dir": output_dir,
            "artifact_suffix": "",
            "report": lambda fraction, message: None,
            "limits": ComputeLimits(threads=2),
        }
        fields.update(overrides)
        return StepInput(**fields)

    return factory


class CancelOnCall:
    """A progress callback that cancels the job on its Nth call, and counts the calls."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, fraction: float, message: str) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise JobCancelled()


@pytest.fixture(params=["small", "large", "narrow", "out-of-core"])
def data_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on every profiling path: one query in this thread, or a query per column;
    `narrow`: as for thousands of columns (a few columns per query, rows grouped a batch of
    columns at a time, flags found by shared scans, wide queries planned without CSE, a COPY
    starting with more memory); `out-of-core`: as for columns too long for numpy (profiles
    and quantiles from DuckDB's streaming scans, narrowed in several rounds)."""
    from services.processing.processors import duck, output
    from services.processing.processors.tables import aggregates, anomalies, metrics, profiles

    if request.param != "small":
        monkeypatch.setattr(profiles, "SMALL_VALUES", 0)
        monkeypatch.setattr(metrics, "SMALL_VALUES", 0)
    if request.param == "narrow":
        monkeypatch.setattr(duck, "MAX_SCAN_COLUMNS", 4)
        monkeypatch.setattr(duck, "WIDE_EXPRESSIONS", 0)
        monkeypatch.setattr(anomalies, "SCAN_GROUP", 2)
        monkeypatch.setattr(profiles, "find_extremes", lambda *args: None)
        monkeypatch.setattr(output, "COPY_BYTES_PER_COLUMN", 1 << 40)
    if request.param == "out-of-core":
        monkeypatch.setattr(profiles, "BYTES_PER_VALUE", 1 << 40)
        monkeypatch.setattr(aggregates, "parse_size", lambda text: 1000)
        monkeypatch.setattr(aggregates, "BUCKETS", 4)
        monkeypatch.setattr(aggregates, "fetch_limit", lambda step: 16)
        monkeypatch.setattr(profiles, "fetch_limit", lambda step: 16)
    return str(request.param)
