"""How outputs write values: ISO 8601 timestamps, stable booleans and numbers, JSON that
standard readers accept, zero-row outputs that keep the column names where the format can."""

import csv
import json
import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import ColumnInfo
from services.processing.processors.duck import connect
from services.processing.processors.tables import metrics, normalize
from tests.unit.processors.conftest import StepFactory, write_parquet

OSLO = timezone(timedelta(hours=2))
I64 = np.iinfo(np.int64)
TYPES = {
    "naive": "timestamp",
    "aware": "timestamp",
    "nanos": "timestamp",
    "day": "date",
    "clock": "time",
    "flag": "boolean",
    "x": "float",
    "dec": "decimal",
    "big": "integer",
    "s": "string",
}


def typed_table() -> pa.Table:
    return pa.table(
        {
            "naive": pa.array(
                [datetime(2026, 6, 1, 19), datetime(2026, 6, 1, 19, 0, 0, 500000), None],
                type=pa.timestamp("us"),
            ),
            "aware": pa.array(
                [
                    datetime(2026, 6, 1, 21, tzinfo=OSLO),  # 19:00 UTC
                    datetime(2026, 6, 1, 19, 0, 0, 500000, tzinfo=UTC),
                    None,
                ],
                type=pa.timestamp("us", tz="UTC"),
            ),
            "nanos": pa.array(
                [1_780_340_400_000_000_000, 1_780_340_400_123_456_789, None],
                type=pa.timestamp("ns"),
            ),
            "day": pa.array([date(2026, 6, 1), date(1969, 12, 31), None]),
            "clock": pa.array([time(19), time(19, 0, 0, 500000), None], type=pa.time64("us")),
            "flag": pa.array([True, False, None]),
            "x": pa.array([0.1, math.nan, math.inf]),
            "dec": pa.array(
                [Decimal("12345678901234567890123.45"), Decimal("1.50"), None],
                type=pa.decimal128(38, 2),
            ),
            "big": pa.array([int(I64.max), int(I64.min), 0], type=pa.int64()),
            "s": pa.array(["a", "b,c", None]),
        }
    )


def run_normalize(make_step: StepFactory, path: Path, fmt: str, **params: Any) -> Path:
    columns = [ColumnInfo(name=n, type=t, null_count=0) for n, t in TYPES.items()]
    step = make_step(parquet_path=path, columns=columns)
    validated = normalize.NormalizeParams.model_validate({"output_format": fmt, **params})
    return normalize.run(step, validated).artifacts[0].path


@pytest.fixture
def typed(tmp_path: Path) -> Path:
    return write_parquet(typed_table(), tmp_path / "typed.parquet")


def test_csv_cells(make_step: StepFactory, typed: Path) -> None:
    with run_normalize(make_step, typed, "csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(TYPES)
    assert rows[1] == [
        "2026-06-01T19:00:00",
        "2026-06-01T19:00:00+00:00",
        "2026-06-01T19:00:00",
        "2026-06-01",
        "19:00:00",
        "true",
        "0.1",
        "12345678901234567890123.45",
        "9223372036854775807",
        "a",
    ]
    assert rows[2] == [
        "2026-06-01T19:00:00.500000",
        "2026-06-01T19:00:00.500000+00:00",
        "2026-06-01T19:00:00.123456789",
        "1969-12-31",
        "19:00:00.500000",
        "false",
        "nan",
        "1.50",
        "-9223372036854775808",
        "b,c",
    ]
    assert rows[3] == ["", "", "", "", "", "", "inf", "", "0", ""]
    # The timestamps are what Python's isoformat writes for the same values.
    table = typed_table()
    for name in ("naive", "aware"):
        want = [v.isoformat() for v in table[name].to_pylist() if v is not None]
        got = [row[list(TYPES).index(name)] for row in rows[1:3]]
        assert got == want
        assert [datetime.fromisoformat(v) for v in got] == table[name].to_pylist()[:2]


def strict_json(text: str) -> Any:
    """json.loads refusing NaN and Infinity, which standard JSON does not have."""

    def refuse(token: str) -> None:
        raise AssertionError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_cells(make_step: StepFactory, typed: Path, fmt: str) -> None:
    text = run_normalize(make_step, typed, fmt).read_text()
    records = strict_json(text) if fmt == "json" else [strict_json(x) for x in text.splitlines()]
    assert records[0] == {
        "naive": "2026-06-01T19:00:00",
        "aware": "2026-06-01T19:00:00+00:00",
        "nanos": "2026-06-01T19:00:00",
        "day": "2026-06-01",
        "clock": "19:00:00",
        "flag": True,
        "x": 0.1,
        "dec": "12345678901234567890123.45",  # exact, as a string
        "big": int(I64.max),  # exact for a reader keeping integers (Python does)
        "s": "a",
    }
    assert records[1]["x"] is None and records[2]["x"] is None  # NaN and inf
    assert records[1]["dec"] == "1.50" and records[1]["flag"] is False
    assert records[1]["aware"] == "2026-06-01T19:00:00.500000+00:00"
    assert all(v is None for k, v in records[2].items() if k not in ("x", "big"))


def test_floats_read_back_exactly(make_step: StepFactory, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    scale = 10.0 ** rng.integers(-320, 308, 2000)
    values = np.concatenate([rng.normal(0.0, 1.0, 2000) * scale, [5e-324, 1.7976931348623157e308]])
    table = pa.table({"x": values})
    path = write_parquet(table, tmp_path / "floats.parquet")
    step = make_step(parquet_path=path, columns=[ColumnInfo(name="x", type="float", null_count=0)])
    for fmt in ("csv", "ndjson"):
        params = normalize.NormalizeParams(output_format=fmt)
        out = normalize.run(step, params).artifacts[0].path.read_text().splitlines()
        got = [float(v) for v in out[1:]] if fmt == "csv" else [strict_json(v)["x"] for v in out]
        assert got == values.tolist(), fmt


def test_summaries_write_timestamps_in_iso_8601_utc(make_step: StepFactory, typed: Path) -> None:
    columns = [ColumnInfo(name=n, type=t, null_count=0) for n, t in TYPES.items()]
    step = make_step(parquet_path=typed, columns=columns)
    summary = metrics.run(step, metrics.MetricsParams(columns=["naive", "aware"])).summary
    assert summary["columns"]["naive"]["min"] == "2026-06-01T19:00:00"
    assert summary["columns"]["aware"]["min"] == "2026-06-01T19:00:00+00:00"
    assert summary["columns"]["aware"]["max"] == "2026-06-01T19:00:00.500000+00:00"
    with connect(step) as con:  # whatever the host's zone, and in a pool's cursors too
        assert con.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
        cursor = con.cursor()
        assert cursor.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
        cursor.close()


def test_a_fill_value_past_64_bits_is_a_string_in_the_summary(
    make_step: StepFactory, tmp_path: Path
) -> None:
    path = write_parquet(pa.table({"x": [1.0, None]}), tmp_path / "gap.parquet")
    step = make_step(parquet_path=path, columns=[ColumnInfo(name="x", type="float", null_count=1)])
    params = normalize.NormalizeParams.model_validate(
        {"fill_nulls": {"strategy": "constant", "value": 2**70}, "output_format": "parquet"}
    )
    result = normalize.run(step, params)
    assert result.summary["filled"]["x"] == {"count": 1, "value": str(2**70)}
    assert pq.read_table(result.artifacts[0].path)["x"].to_pylist() == [1.0, float(2**70)]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json", "ndjson"])
def test_a_dataset_without_rows(make_step: StepFactory, tmp_path: Path, fmt: str) -> None:
    path = write_parquet(typed_table().slice(0, 0), tmp_path / "empty.parquet")
    params = {"drop_duplicates": True, "scale": {"method": "zscore"}}
    out = run_normalize(make_step, path, fmt, **params)
    if fmt == "csv":
        assert out.read_text() == ",".join(TYPES) + "\n"
    elif fmt == "parquet":
        assert pq.read_schema(out).names == list(TYPES) and pq.read_metadata(out).num_rows == 0
    elif fmt == "json":  # JSON records name their columns only in rows
        assert strict_json(out.read_text()) == []
    else:
        assert out.read_text() == ""


@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
def test_scaled_json_outputs_stay_json(make_step: StepFactory, tmp_path: Path, method: str) -> None:
    x = [1.0, math.inf, 2.0, math.nan, 3.0, 1e-300, 2.5]
    path = write_parquet(
        pa.table({"x": x, "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]}), tmp_path / "s.parquet"
    )
    columns = [ColumnInfo(name=n, type="float", null_count=0) for n in ("x", "y")]
    params = normalize.NormalizeParams.model_validate(
        {"scale": {"method": method}, "output_format": "json"}
    )
    out = normalize.run(make_step(parquet_path=path, columns=columns), params).artifacts[0].path
    records = strict_json(out.read_text())
    assert records[1]["x"] is None and records[3]["x"] is None  # inf (scaled or not), NaN
    assert all(isinstance(r["y"], float) for r in records)
