"""Rows back to the file: anomalies.csv's `line`, and the hidden line column is never data."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import ColumnInfo
from services.processing.processors.columns import LINE_COLUMN
from services.processing.processors.tables import anomalies, metrics, normalize
from tests.unit.processors.conftest import (
    StepFactory,
    columns_of,
    make_table,
    with_lines,
    write_parquet,
)


def lines_for(rows: int, seed: int = 11) -> list[int | None]:
    """Increasing line numbers with gaps, as failed rows and multi-line records leave."""
    gaps = np.random.default_rng(seed).integers(1, 4, rows)
    return [int(v) for v in 1 + np.cumsum(gaps)]


Lined = tuple[Path, list[ColumnInfo], list[int | None], pd.DataFrame]


@pytest.fixture
def lined(tmp_path: Path) -> Lined:
    table = make_table()
    lines = lines_for(table.num_rows)
    path = write_parquet(with_lines(table, lines), tmp_path / "lined.parquet")
    return path, columns_of(table), lines, table.to_pandas()


@pytest.mark.parametrize("method", ["zscore", "modified_zscore", "iqr"])
def test_anomalies_give_each_flagged_row_its_line(
    make_step: StepFactory,
    lined: Lined,
    method: str,
    data_size: str,
) -> None:
    path, columns, lines, _ = lined
    result = anomalies.run(
        make_step(parquet_path=path, columns=columns), anomalies.AnomaliesParams(method=method)
    )
    assert LINE_COLUMN not in result.summary["columns"]  # not a column of the dataset
    got = pd.read_csv(result.artifacts[0].path)
    assert list(got.columns) == ["row_number", "line", "column", "value", "score"]
    assert len(got) == result.summary["total"] > 0
    assert got["line"].tolist() == [lines[r - 1] for r in got["row_number"]]

    # The same flags as on the copy without lines, where `line` is empty.
    plain = anomalies.run(make_step(), anomalies.AnomaliesParams(method=method))
    without = pd.read_csv(plain.artifacts[0].path)
    assert without["line"].isna().all()
    assert got.drop(columns="line").equals(without.drop(columns="line"))


def test_line_and_value_lead_back_to_the_csv_line(make_step: StepFactory, tmp_path: Path) -> None:
    # A source file with a header, a blank line and a row failed at ingest before the outlier.
    source = ["a,b", "1.0,x", "", "oops", "2.0,y", "1.5,z", "1.2,w", "99.0,v", "1.1,u"]
    good = [i + 1 for i, text in enumerate(source) if "," in text and i > 0]
    table = pa.table(
        {
            "a": [float(source[n - 1].split(",")[0]) for n in good],
            "b": [source[n - 1].split(",")[1] for n in good],
        }
    )
    path = write_parquet(with_lines(table, good), tmp_path / "lined.parquet")
    step = make_step(parquet_path=path, columns=columns_of(table))
    result = anomalies.run(step, anomalies.AnomaliesParams(method="iqr"))
    [flag] = pd.read_csv(result.artifacts[0].path).to_dict("records")
    assert (flag["row_number"], flag["line"], flag["value"]) == (5, 8, 99.0)
    assert source[flag["line"] - 1].split(",")[0] == "99.0"


def test_a_dataset_column_named_like_the_hidden_one_is_data(
    make_step: StepFactory, tmp_path: Path
) -> None:
    table = pa.table({LINE_COLUMN: [1.0, 2.0, 3.0, 2.0, 500.0, 2.5, 1.5, 2.0]})
    path = write_parquet(table, tmp_path / "named.parquet")
    step = make_step(parquet_path=path, columns=columns_of_all(table))
    result = anomalies.run(step, anomalies.AnomaliesParams(method="iqr"))
    got = pd.read_csv(result.artifacts[0].path)
    assert got["column"].tolist() == [LINE_COLUMN] and got["line"].isna().all()


def columns_of_all(table: pa.Table) -> list[ColumnInfo]:
    return [ColumnInfo(name=n, type="float", null_count=0) for n in table.column_names]


def test_metrics_and_normalize_never_treat_the_lines_as_data(
    make_step: StepFactory,
    lined: Lined,
    data_size: str,
) -> None:
    path, columns, _, df = lined
    step = make_step(parquet_path=path, columns=columns)
    summary = metrics.run(step, metrics.MetricsParams()).summary
    assert list(summary["columns"]) == list(df.columns)
    # Every line differs: counted as a column, no row would be a duplicate.
    assert summary["duplicate_rows"] == int(df.duplicated().sum()) > 0

    for fmt in ("parquet", "csv", "json", "ndjson"):
        params = normalize.NormalizeParams.model_validate(
            {"drop_duplicates": True, "output_format": fmt}
        )
        result = normalize.run(make_step(parquet_path=path, columns=columns), params)
        out = result.artifacts[0].path
        if fmt == "parquet":
            names = pq.read_schema(out).names
        elif fmt == "csv":
            names = out.read_text().splitlines()[0].split(",")
        elif fmt == "json":
            names = list(json.loads(out.read_text())[0])
        else:
            names = list(json.loads(out.read_text().splitlines()[0]))
        assert names == list(df.columns), fmt
        assert result.summary["rows_out"] == len(df.drop_duplicates()), fmt


def test_lines_come_from_every_row_group_and_unknown_lines_stay_empty(
    make_step: StepFactory, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, 1000)
    x[[3, 250, 251, 777, 999]] = [50.0, -60.0, 70.0, 80.0, -90.0]
    lines: list[int | None] = [10 + 2 * i for i in range(1000)]
    lines[777] = None  # a row whose line ingest could not tell
    table = pa.table({"x": x})
    path = tmp_path / "groups.parquet"
    # Small row groups: the flagged rows lie in several, read one at a time.
    pq.write_table(with_lines(table, lines), path, row_group_size=100)
    assert pq.read_metadata(path).num_row_groups == 10
    step = make_step(parquet_path=path, columns=columns_of(table))
    result = anomalies.run(step, anomalies.AnomaliesParams(method="zscore"))
    got = pd.read_csv(result.artifacts[0].path)
    assert got["row_number"].tolist() == [4, 251, 252, 778, 1000]
    assert got["line"].tolist()[:3] == [16, 510, 512] and got["line"].tolist()[4] == 2008
    assert np.isnan(got["line"].tolist()[3])


def test_reading_the_lines_reports_progress_and_stops_on_cancel(
    make_step: StepFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.processing.processors import duck
    from services.processing.processors.base import JobCancelled

    path = tmp_path / "groups.parquet"
    pq.write_table(with_lines(pa.table({"x": np.arange(1000.0)})), path, row_group_size=100)
    monkeypatch.setattr(duck, "POLL_SECONDS", 0.0)
    ticks: list[int] = []
    got = duck.values_at(path, LINE_COLUMN, np.array([5, 150, 999]), tick=lambda: ticks.append(1))
    assert got.to_pylist() == [7, 152, 1001] and ticks

    def cancel() -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        duck.values_at(path, LINE_COLUMN, np.array([5, 150, 999]), tick=cancel)
