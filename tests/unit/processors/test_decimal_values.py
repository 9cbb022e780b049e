"""A DECIMAL column's values read the same in the dataset preview and in step summaries."""

from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets.ingest import IngestResult, ingest
from services.processing.processors.tables import metrics, normalize
from tests.unit.processors.conftest import StepFactory

# More digits than a double keeps, a scale that str(Decimal) would write as 1E-10, and a mode.
AMOUNTS = [
    Decimal("12345678901234567890.1234567890"),
    None,
    Decimal("-0.0000000001"),
    Decimal("2.5000000000"),
    Decimal("2.5000000000"),
]


@pytest.fixture
def ingested(tmp_path: Path) -> tuple[Path, IngestResult]:
    table = pa.table({"amount": pa.array(AMOUNTS, pa.decimal128(38, 10)), "n": range(5)})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    copy = tmp_path / "copy.parquet"
    return copy, ingest(source, DatasetFormat.parquet, copy, tmp_path / "work")


@pytest.mark.parametrize("path", ["small", "large"])
def test_metrics_min_and_max_are_the_preview_values(
    ingested: tuple[Path, IngestResult],
    make_step: StepFactory,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    copy, result = ingested
    shown = [row["amount"] for row in result.preview]
    assert shown == [
        "12345678901234567890.1234567890",
        None,
        "-0.0000000001",
        "2.5000000000",
        "2.5000000000",
    ]
    if path == "large":
        monkeypatch.setattr(metrics, "SMALL_VALUES", 0)
    step = make_step(parquet_path=copy, columns=result.columns)
    summary = metrics.run(step, metrics.MetricsParams(columns=["amount"])).summary
    # As the API sends both: serialised with orjson, read back.
    column = orjson.loads(orjson.dumps(summary))["columns"]["amount"]
    preview = orjson.loads(orjson.dumps(result.preview))
    assert column["type"] == "decimal"
    assert column["min"] == preview[2]["amount"] == "-0.0000000001"
    assert column["max"] == preview[0]["amount"] == "12345678901234567890.1234567890"
    assert isinstance(column["mean"], float)  # a computed figure, not a stored value


def test_normalize_mode_fill_value_is_the_preview_value(
    ingested: tuple[Path, IngestResult], make_step: StepFactory
) -> None:
    copy, result = ingested
    step = make_step(parquet_path=copy, columns=result.columns)
    params = normalize.NormalizeParams.model_validate(
        {"fill_nulls": {"strategy": "mode", "columns": ["amount"]}, "output_format": "csv"}
    )
    summary = normalize.run(step, params).summary
    assert summary["filled"]["amount"] == {"count": 1, "value": result.preview[3]["amount"]}
