"""One null count: a dataset column's null_count (ingest) equals pandas' isna().sum() and the
metrics step's null_count, float NaN included."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets.ingest import IngestResult, connect, ingest
from services.processing.datasets.parquet_reader import summarize
from services.processing.processors.base import ComputeLimits, StepInput
from services.processing.processors.tables import metrics

CSV = b"id,x,y,name\n1,1.5,NaN,a\n2,nan,2,b\n3,,3,\n4,inf,nan,d\n5,-2.25,5,e\n"


def _metrics_nulls(result: IngestResult, copy: Path, tmp_path: Path) -> dict[str, int]:
    out = tmp_path / "step"
    out.mkdir()
    step = StepInput(
        parquet_path=copy,
        columns=result.columns,
        dataset_format=DatasetFormat.csv,
        output_dir=out,
        artifact_suffix="",
        report=lambda fraction, message: None,
        limits=ComputeLimits(threads=2),
    )
    summary = metrics.run(step, metrics.MetricsParams()).summary
    return {name: column["null_count"] for name, column in summary["columns"].items()}


def _check(result: IngestResult, copy: Path, expected: pd.DataFrame, tmp_path: Path) -> None:
    ingested = {c.name: c.null_count for c in result.columns}
    pandas_nulls = {name: int(expected[name].isna().sum()) for name in expected.columns}
    assert ingested == pandas_nulls
    assert _metrics_nulls(result, copy, tmp_path) == ingested
    copied = pd.read_parquet(copy).drop(columns="__line__", errors="ignore")
    assert {name: int(copied[name].isna().sum()) for name in copied.columns} == ingested


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
def test_csv_with_nan_in_a_float_column(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    copy = tmp_path / "copy.parquet"

    result = ingest(source, DatasetFormat.csv, copy, tmp_path / "work")

    types = {c.name: c.type for c in result.columns}
    assert types["x"] == types["y"] == "float"
    assert {c.name: c.null_count for c in result.columns} == {"id": 0, "x": 2, "y": 2, "name": 1}
    _check(result, copy, pd.read_csv(io.BytesIO(CSV)), tmp_path)  # inf is not null


@pytest.mark.parametrize("writer", ["pyarrow", "duckdb"])
def test_parquet_with_nan_in_float_columns(tmp_path: Path, writer: str) -> None:
    table = pa.table(
        {
            "f64": pa.array([1.0, float("nan"), None, float("nan"), 2.0] * 30_000, pa.float64()),
            "f32": pa.array([float("nan"), 1.0, 1.0, None, None] * 30_000, pa.float32()),
            "i": pa.array([1, None, 3, 4, 5] * 30_000, pa.int64()),
            "s": pa.array(["NaN", None, "x", "y", "z"] * 30_000),  # text "NaN" is a value
        }
    )
    source = tmp_path / "data.parquet"
    if writer == "pyarrow":
        pq.write_table(table, source, row_group_size=50_000)
    else:
        con = connect(tmp_path)
        con.register("t", table)
        con.execute(f"COPY t TO '{source}' (FORMAT parquet)")
        con.close()
    copy = tmp_path / "copy.parquet"

    result = ingest(source, DatasetFormat.parquet, copy, tmp_path / "work")

    assert {c.name: c.null_count for c in result.columns} == {
        "f64": 90_000,
        "f32": 90_000,
        "i": 30_000,
        "s": 30_000,
    }
    _check(result, copy, table.to_pandas(), tmp_path)


def test_summary_scans_floats_whose_footer_has_no_nan_count(tmp_path: Path) -> None:
    # pyarrow writes no NaN count (and leaves NaN out of min/max): the float column is scanned.
    path = tmp_path / "no_nan_count.parquet"
    table = pa.table({"f": [1.0, float("nan"), None] * 1000, "n": [1, None, 3] * 1000})
    pq.write_table(table, path)
    con = connect(tmp_path)
    stats = con.execute(
        "SELECT path_in_schema, count(stats_nan_count) FROM parquet_metadata(?) "
        "GROUP BY path_in_schema",
        [str(path)],
    ).fetchall()
    assert dict(stats)["f"] == 0

    result = summarize(con, path, 0, None)

    assert [(c.name, c.null_count) for c in result.columns] == [("f", 2000), ("n", 1000)]
