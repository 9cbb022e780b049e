"""Typing at the edges, against pandas' read_csv defaults where they are the reference, or the
documented rule (README, "How columns are typed"): special float and date words, null tokens,
header names that differ in case, leading zeros, empty columns, integers past int64, trailing
delimiters, and the line of the source file each row of the copy comes from.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import ColumnInfo, DatasetFormat
from services.processing.datasets import csv_reader
from services.processing.datasets.column_types import DEFAULT_NULL_VALUES
from services.processing.datasets.common import LINE_COLUMN, MAX_STEPS, NAMES_KEY, storage_names
from services.processing.datasets.ingest import IngestResult, ingest
from services.processing.processors.base import ComputeLimits, StepInput
from services.processing.processors.copy_names import (
    copy_columns,
    copy_renames,
    renamed,
    with_dataset_names,
)
from services.processing.processors.registry import get_processor, validate_step
from tests.unit.test_ingest import assert_no_row_lost, failed_rows
from tests.unit.test_ingest_hostile import CASES, Ready

CSV, JSON, NDJSON, PARQUET = (
    DatasetFormat.csv,
    DatasetFormat.json,
    DatasetFormat.ndjson,
    DatasetFormat.parquet,
)
Run = Callable[..., IngestResult]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Ingest bytes; the copy is at tmp_path / "copy.parquet"."""

    def _run(
        data: bytes, fmt: DatasetFormat = CSV, null_values: list[str] | None = None
    ) -> IngestResult:
        source = tmp_path / f"source.{fmt}"
        source.write_bytes(data)
        return ingest(
            source, fmt, tmp_path / "copy.parquet", tmp_path / "work", null_values=null_values
        )

    return _run


def missing(value: Any) -> bool:
    """Null, or a float NaN: missing either way, as pandas' isna() says."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def typed(result: IngestResult) -> dict[str, str]:
    return {c.name: c.type for c in result.columns}


def copy_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The copy's rows, its own column names, the line column included."""
    rows: list[dict[str, Any]] = pq.read_table(tmp_path / "copy.parquet").to_pylist()
    return rows


def values(tmp_path: Path, column: int) -> list[Any]:
    """The values of the copy's column at that place (its name there may differ)."""
    found: list[Any] = pq.read_table(tmp_path / "copy.parquet").column(column).to_pylist()
    return found


def lines_of(tmp_path: Path) -> list[int | None]:
    lines: list[int | None] = (
        pq.read_table(tmp_path / "copy.parquet").column(LINE_COLUMN).to_pylist()
    )
    return lines


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make every CSV file a "large" one, typed from its first 2,048 rows (DuckDB's least)."""
    monkeypatch.setattr(csv_reader, "FULL_SNIFF_BYTES", 0)
    monkeypatch.setattr(csv_reader, "SAMPLE_ROWS", 2048)
    return 2048


# --- item 2: special float and date words --------------------------------------------------


@pytest.mark.parametrize(
    "tokens",
    [
        ["inf", "infinity", "-inf"],
        ["inf", "-inf", "nan"],
        ["Infinity", "-Infinity", "INF", "NaN", "-nan"],
        ["+inf", "inf", "1.5"],
    ],
)
def test_special_float_words_are_a_float_column_as_pandas_reads_them(
    run: Run, tmp_path: Path, tokens: list[str]
) -> None:
    data = ("x\n" + "\n".join(tokens) + "\n").encode()
    result = run(data)
    assert typed(result) == {"x": "float"}
    expected = pd.read_csv(io.BytesIO(data))["x"]
    got = values(tmp_path, 0)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert (ours is None and math.isnan(theirs)) or ours == theirs
    assert result.columns[0].null_count == int(expected.isna().sum())


@pytest.mark.parametrize("word", ["infinity", "-infinity", "epoch", "Epoch", "INF", " epoch "])
@pytest.mark.parametrize(
    "head",
    [
        "d\n2020-01-01\n2021-06-30\n",
        "d\n2020-01-01 10:00:00\n2021-06-30 11:30:00\n",
        "d\n2020-01-01T10:00:00+02:00\n2021-06-30T11:30:00Z\n",
        "d\n01/31/2020\n06/30/2021\n",
    ],
)
def test_a_date_column_holding_a_special_word_is_text_with_the_word_kept(
    run: Run, tmp_path: Path, head: str, word: str
) -> None:
    result = run(f"{head}{word}\n".encode())
    assert typed(result) == {"d": "string"}
    assert values(tmp_path, 0)[-1] == word.strip() or values(tmp_path, 0)[-1] == word


@pytest.mark.parametrize("word", ["today", "now", "allballs", "tomorrow", "yesterday"])
def test_other_special_date_words_are_text_too(run: Run, tmp_path: Path, word: str) -> None:
    result = run(f"d\n2020-01-01\n{word}\n".encode())
    assert typed(result) == {"d": "string"}
    assert values(tmp_path, 0) == ["2020-01-01", word]


def test_a_real_epoch_date_stays_a_date(run: Run, tmp_path: Path) -> None:
    result = run(b"d,t\n1970-01-01,1970-01-01 00:00:00\n2020-01-01,2020-01-01 10:00:00\n")
    assert typed(result) == {"d": "date", "t": "timestamp"}


def test_a_special_word_after_the_sample_makes_the_column_text(
    run: Run, tmp_path: Path, sampled: int
) -> None:
    rows = [f"{i},2020-01-{1 + i % 28:02d}" for i in range(3 * sampled)]
    rows[2 * sampled] = f"{2 * sampled},infinity"
    rows[2 * sampled + 7] = f"{2 * sampled + 7},epoch"
    result = run(("id,d\n" + "\n".join(rows) + "\n").encode())
    assert typed(result) == {"id": "integer", "d": "string"}
    assert result.failed_row_count == 0
    got = values(tmp_path, 1)
    assert got[2 * sampled] == "infinity" and got[2 * sampled + 7] == "epoch"
    assert got[0] == "2020-01-01"


def test_special_words_in_json_and_infinite_parquet_dates_are_text(
    run: Run, tmp_path: Path
) -> None:
    result = run(b'{"d": "2020-01-01"}\n{"d": "epoch"}\n{"d": "infinity"}\n', NDJSON)
    assert typed(result) == {"d": "string"}
    assert values(tmp_path, 0) == ["2020-01-01", "epoch", "infinity"]
    source = tmp_path / "dates.parquet"
    duckdb.connect().execute(
        "COPY (SELECT * FROM (VALUES (DATE '2020-01-01', 1), ('infinity'::DATE, 2)) t(d, n)) "
        f"TO '{source}'"
    )
    result = ingest(source, PARQUET, tmp_path / "copy.parquet", tmp_path / "work")
    assert typed(result) == {"d": "string", "n": "integer"}
    assert values(tmp_path, 0) == ["2020-01-01", "infinity"]


# --- item 5: a trailing delimiter ----------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "found"), [(b"3,12.0,c,", 4), (b"3,12.0,c,extra", 4), (b"3,12.0,c,,", 5)]
)
def test_a_row_with_more_fields_than_the_header_is_a_failed_row(
    run: Run, tmp_path: Path, row: bytes, found: int
) -> None:
    data = b"a,b,c\n1,2.0,x\n" + row + b"\n4,5.0,\n"
    result = run(data)
    assert failed_rows(result) == [(3, row.decode(), f"expected 3 fields, found {found}")]
    assert [r["a"] for r in copy_rows(tmp_path)] == [1, 4]
    assert lines_of(tmp_path) == [2, 4]
    assert_no_row_lost(result, 3)


def test_a_trailing_delimiter_is_found_wherever_it_is(
    run: Run, tmp_path: Path, sampled: int
) -> None:
    # Quoted delimiters in text values, a quoted line break, and the row far past the sample.
    rows = [f'{i},"x, {i}",y' for i in range(3 * sampled)]
    rows[5] = '5,"two\nlines, here",y'
    rows[2 * sampled] = f'{2 * sampled},"x, y",z,'
    result = run(("id,t,u\n" + "\n".join(rows) + "\n").encode())
    assert failed_rows(result) == [
        (2 * sampled + 3, f'{2 * sampled},"x, y",z,', "expected 3 fields, found 4")
    ]
    assert result.row_count == 3 * sampled - 1
    ids = values(tmp_path, 0)
    assert 2 * sampled not in ids
    for i, line in zip(ids, lines_of(tmp_path), strict=True):
        assert line == i + 2 + (i > 5)  # the quoted line break moves later rows down one line


def test_a_header_ending_with_a_delimiter_lets_every_row_end_with_one(
    run: Run, tmp_path: Path
) -> None:
    result = run(b"a,b,c,\n1,2,3,\n4,5,6,\n")
    assert typed(result) == {"a": "integer", "b": "integer", "c": "integer"}
    assert result.failed_row_count == 0
    assert copy_rows(tmp_path) == [
        {"a": 1, "b": 2, "c": 3, LINE_COLUMN: 2},
        {"a": 4, "b": 5, "c": 6, LINE_COLUMN: 3},
    ]
    # A row without it then has a field too few.
    result = run(b"a,b,c,\n1,2,3,\n4,5,6\n")
    assert failed_rows(result) == [(3, "4,5,6", "expected 4 fields, found 3")]


# --- item 6: null tokens --------------------------------------------------------------------


TOKENS = ["NA", "N/A", "null", "NULL", "None", "#N/A", "-nan", "nan", "NaN", ""]


def test_the_default_null_tokens_are_pandas_defaults() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(DEFAULT_NULL_VALUES) == set(STR_NA_VALUES) | {""}


@pytest.mark.parametrize("token", TOKENS)
def test_a_null_token_in_a_number_column_is_null_as_pandas_reads_it(
    run: Run, tmp_path: Path, token: str
) -> None:
    data = f"i,f\n1,1.5\n{token},{token}\n3,+3\n".encode()
    result = run(data)
    # A NaN word is a float value (missing, as a null is): with integers it makes a float column,
    # as in pandas. Any other token keeps an integer column integer (pandas: float64 with NaN).
    float_word = token.lower().lstrip("-") == "nan"
    assert typed(result) == {"i": "float" if float_word else "integer", "f": "float"}
    frame = pd.read_csv(io.BytesIO(data))
    assert [c.null_count for c in result.columns] == frame.isna().sum().tolist()
    got = copy_rows(tmp_path)
    assert [missing(r["i"]) for r in got] == [False, True, False]
    assert [r["i"] for r in got if not missing(r["i"])] == [1, 3]
    assert [missing(r["f"]) for r in got] == frame["f"].isna().tolist() == [False, True, False]
    assert [r["f"] for r in got if not missing(r["f"])] == [1.5, 3.0]


def test_every_default_token_at_once_and_other_types(run: Run, tmp_path: Path) -> None:
    tokens = [t for t in DEFAULT_NULL_VALUES if t]
    lines = [f"{i},{t},{t},{t}" for i, t in enumerate(tokens)]
    data = ("n,d,b,x\n" + "\n".join(lines) + "\n99,2020-01-02,true,+7\n").encode()
    result = run(data)
    assert typed(result) == {"n": "integer", "d": "date", "b": "boolean", "x": "integer"}
    assert [c.null_count for c in result.columns] == [0, len(tokens), len(tokens), len(tokens)]
    frame = pd.read_csv(io.BytesIO(data))
    assert frame.isna().sum().tolist() == [c.null_count for c in result.columns]
    assert copy_rows(tmp_path)[-1] == {
        "n": 99,
        "d": pd.Timestamp("2020-01-02").date(),
        "b": True,
        "x": 7,
        LINE_COLUMN: len(tokens) + 2,
    }


def test_plus_signed_numbers_are_numbers_as_pandas_reads_them(run: Run, tmp_path: Path) -> None:
    data = b"a,b,c\n+3,+inf,+1e3\n4,-2.5,5\n"
    result = run(data)
    assert typed(result) == {"a": "integer", "b": "float", "c": "float"}
    frame = pd.read_csv(io.BytesIO(data))
    for place, name in enumerate(["a", "b", "c"]):
        assert values(tmp_path, place) == frame[name].tolist()


def test_tokens_in_a_text_column_stay_text(run: Run, tmp_path: Path) -> None:
    # Unlike pandas, which makes them NaN everywhere: in text they may be values (NA: Namibia).
    result = run(b"country,n\nNA,1\nFR,NA\nNone,3\n,4\n")
    assert typed(result) == {"country": "string", "n": "integer"}
    assert values(tmp_path, 0) == ["NA", "FR", "None", None]
    assert values(tmp_path, 1) == [1, None, 3, 4]


def test_a_column_of_tokens_only_is_a_float_column_of_nulls(run: Run, tmp_path: Path) -> None:
    data = b"a,b,c\n1,NA,\n2,null,\n3,,\n"
    result = run(data)
    assert typed(result) == {"a": "integer", "b": "float", "c": "float"}
    assert [c.null_count for c in result.columns] == [0, 3, 3]
    assert pd.read_csv(io.BytesIO(data)).dtypes.astype(str).tolist() == [
        "int64",
        "float64",
        "float64",
    ]


@pytest.mark.parametrize(
    ("null_values", "types", "nulls"),
    [
        (None, {"x": "integer", "y": "string"}, [2, 0]),  # the default list
        (["-", "?"], {"x": "string", "y": "integer"}, [0, 2]),  # NA is a value now
        ([], {"x": "string", "y": "string"}, [0, 0]),  # only empty fields are null
    ],
)
def test_the_null_tokens_can_be_chosen_per_upload(
    run: Run, null_values: list[str] | None, types: dict[str, str], nulls: list[int]
) -> None:
    data = b"x,y\n1,-\nNA,2\nN/A,?\n4,5\n"
    result = run(data, null_values=null_values)
    assert typed(result) == types
    assert [c.null_count for c in result.columns] == nulls
    if null_values is not None:  # pandas with the same list and nothing else
        frame = pd.read_csv(io.BytesIO(data), na_values=null_values, keep_default_na=False)
        number = [name for name, kind in types.items() if kind != "string"]
        assert [int(frame[n].isna().sum()) for n in number] == [
            c.null_count for c in result.columns if c.name in number
        ]


def test_a_token_past_the_sample_in_a_token_column_is_null(
    run: Run, tmp_path: Path, sampled: int
) -> None:
    rows = [str(i) for i in range(3 * sampled)]
    rows[3] = "NA"  # in the sample: the column is numbers with tokens
    rows[2 * sampled] = "N/A"
    result = run(("n\n" + "\n".join(rows) + "\n").encode())
    assert typed(result) == {"n": "integer"}
    assert result.columns[0].null_count == 2 and result.failed_row_count == 0


def test_a_value_of_another_type_past_the_sample_makes_a_token_column_text(
    run: Run, tmp_path: Path, sampled: int
) -> None:
    rows = [str(i) for i in range(3 * sampled)]
    rows[3] = "NA"
    rows[2 * sampled] = "n/k"
    result = run(("n\n" + "\n".join(rows) + "\n").encode())
    assert typed(result) == {"n": "string"}
    assert result.failed_row_count == 0
    assert values(tmp_path, 0)[3] == "NA" and values(tmp_path, 0)[2 * sampled] == "n/k"


@pytest.mark.parametrize(("late", "kind"), [("NA", "integer"), ("A-17", "string")])
def test_a_whole_file_typed_column_with_a_late_token_or_word(
    run: Run, tmp_path: Path, late: str, kind: str
) -> None:
    # Typed from every row (a small file): past the 20,480 rows the token sniff looks at.
    rows = [str(i) for i in range(30_000)]
    rows[25_000] = late
    result = run(("n\n" + "\n".join(rows) + "\n").encode())
    assert typed(result) == {"n": kind}
    got = values(tmp_path, 0)
    assert got[25_000] == (None if kind == "integer" else late)
    assert got[7] == (7 if kind == "integer" else "7")
    assert lines_of(tmp_path)[25_000] == 25_002


# --- item 7: names that differ in case -----------------------------------------------------


def test_names_differing_in_case_are_kept_and_exact_repeats_renamed(
    run: Run, tmp_path: Path
) -> None:
    result = run(b"a,A,a,Name,NAME\n1,2,3,4,5\n")
    names = [c.name for c in result.columns]
    assert names == ["a", "A", "a_1", "Name", "NAME"]
    assert result.preview == [dict(zip(names, [1, 2, 3, 4, 5], strict=True))]
    # The copy's own columns are told apart ignoring case; the footer keeps the dataset's names.
    table = pq.read_table(tmp_path / "copy.parquet")
    assert table.column_names == [*storage_names(names), LINE_COLUMN]
    stored = json.loads(pq.read_metadata(tmp_path / "copy.parquet").metadata[NAMES_KEY.encode()])
    assert stored == names
    assert [table.column(i).to_pylist() for i in range(5)] == [[1], [2], [3], [4], [5]]


def test_a_failed_row_names_the_column_as_the_dataset_does(run: Run, sampled: int) -> None:
    rows = [f"{i},{i}" for i in range(3 * sampled)]
    rows[2 * sampled] = f"{2 * sampled},oops"
    result = run(("a,A\n" + "\n".join(rows) + "\n").encode())
    (failed,) = failed_rows(result)
    assert failed[0] == 2 * sampled + 2
    assert failed[2] == 'column "A": cannot convert "oops" to integer'


@pytest.mark.parametrize(
    ("processor", "params"),
    [
        ("metrics", {}),
        ("normalize", {"scale": {"method": "minmax"}, "output_format": "csv"}),
        ("anomalies", {"columns": ["A"], "method": "zscore", "threshold": 1.0}),
    ],
)
def test_a_job_on_columns_a_and_A_keeps_both(
    run: Run, tmp_path: Path, processor: str, params: dict[str, Any]
) -> None:
    result = run(b"a,A\n1,10\n2,20\n3,30\n")
    summary, out = run_step(tmp_path, result.columns, processor, params)
    if processor == "metrics":
        assert summary["columns"]["a"]["max"] == 3 and summary["columns"]["A"]["max"] == 30
    elif processor == "anomalies":
        assert list(summary["columns"]) == ["A"]  # the step asked for A, not a
        flagged = pd.read_csv(out / "anomalies.csv")
        assert flagged["value"].tolist() == [10, 30]
    else:
        # The artifact keeps the copy's names (README, "Column names"), and both columns.
        frame = pd.read_csv(out / "normalized.csv")
        assert frame.columns.tolist() == ["a", "A_1"]
        assert frame["a"].tolist() == [0.0, 0.5, 1.0]
        assert frame["A_1"].tolist() == [0.0, 0.5, 1.0]


# --- item 8: leading zeros, empty columns, integers past int64 -----------------------------


def test_leading_zero_identifiers_stay_text(run: Run, tmp_path: Path) -> None:
    result = run(b"id,n\n007,7\n0042,42\n0,0\n")
    assert typed(result) == {"id": "string", "n": "integer"}
    assert values(tmp_path, 0) == ["007", "0042", "0"]
    # pandas reads them as numbers; the dataset keeps what the file says.
    assert pd.read_csv(io.BytesIO(b"id\n007\n0042\n"))["id"].tolist() == [7, 42]


def test_an_all_empty_column_is_numeric_and_metrics_give_nulls(run: Run, tmp_path: Path) -> None:
    result = run(b"a,b\n1,\n2,\n3,\n")
    assert typed(result) == {"a": "integer", "b": "float"}
    summary, _ = run_step(tmp_path, result.columns, "metrics", {})
    b = summary["columns"]["b"]
    assert b["null_count"] == 3
    assert b.get("mean") is None and b.get("min") is None


def test_a_header_only_file_keeps_text_columns(run: Run) -> None:
    assert typed(run(b"a,b\n")) == {"a": "string", "b": "string"}


@pytest.mark.parametrize(
    ("values_", "kind", "pandas_kind"),
    [
        (["9223372036854775807", "-9223372036854775808"], "integer", "int64"),
        (["9223372036854775808", "1"], "integer", "uint64"),
        (["18446744073709551615", "0"], "integer", "uint64"),
        (["18446744073709551616", "1"], "string", "object"),
        (["-1", "9223372036854775808"], "string", "str"),
        (["+18446744073709551615", "1"], "integer", "uint64"),
    ],
)
def test_integers_past_int64_stay_exact(
    run: Run, tmp_path: Path, values_: list[str], kind: str, pandas_kind: str
) -> None:
    data = ("n\n" + "\n".join(values_) + "\n").encode()
    result = run(data)
    assert typed(result) == {"n": kind}
    got = values(tmp_path, 0)
    if kind == "integer":
        assert got == [int(v) for v in values_]  # exact, not rounded to a float
    else:
        assert got == values_
    # pandas: int64, uint64, then Python ints (object) or text when no integer type holds them.
    assert str(pd.read_csv(io.BytesIO(data))["n"].dtype) == pandas_kind


def test_json_integers_past_int64_stay_exact(run: Run, tmp_path: Path) -> None:
    data = b'{"u": 18446744073709551615, "s": 1}\n{"u": 1, "s": -9223372036854775808}\n'
    result = run(data, NDJSON)
    assert typed(result) == {"u": "integer", "s": "integer"}
    assert values(tmp_path, 0) == [18446744073709551615, 1]
    assert lines_of(tmp_path) == [1, 2]


# --- item 9: the line of each row -----------------------------------------------------------


def physical_lines(data: bytes) -> list[bytes]:
    """The file's lines as failed rows count them (CRLF, LF and CR alone each end one)."""
    return data.removeprefix(b"\xef\xbb\xbf").splitlines()


def assert_rows_found_at_their_lines(data: bytes, tmp_path: Path, key: int = 0) -> None:
    """Opening the file at a row's line shows the row: the line starts with its key value."""
    lines = physical_lines(data)
    table = pq.read_table(tmp_path / "copy.parquet")
    for value, line in zip(
        table.column(key).to_pylist(), table.column(LINE_COLUMN).to_pylist(), strict=True
    ):
        assert line is not None
        text = lines[line - 1].decode("utf-8", "replace").lstrip('"')
        assert text.startswith(str(value)), (value, line, text)


@pytest.mark.parametrize(
    ("data", "rows", "failed"),
    [
        (b"id,v\n1,a\n2,b\n3,c\n", [2, 3, 4], []),
        (b"\n\n  \nid,v\n1,a\n2,b\n", [5, 6], []),  # blank lines before the header
        (b"id,v\r\n1,a\r\n2,b\r\n", [2, 3], []),
        (b"id,v\r1,a\r2,b\r", [2, 3], []),  # old Mac
        (b"\xef\xbb\xbfid,v\n1,a\n2,b\n", [2, 3], []),
        (b"id,v\n1,a\n\n\n2,b\n\n3,c\n\n\n", [2, 5, 7], []),  # blank lines between rows
        (b'id,v\n1,"two\nlines"\n2,"three\nlines\nhere"\n3,x\n', [2, 4, 7], []),
        (b'id,v\r\n1,"two\r\nlines"\r\n\r\n2,b\r\n', [2, 5], []),
        (b"id,v\n1,a\n2\n3,c,d\n4,d\n", [2, 5], [3, 4]),  # failed rows
        (b'id,v\n1,"a\n\nb"\n\n2,"x"\n3,c,\n4,d\n', [2, 6, 8], [7]),  # all of it
        (b"id,v\r\n1,a\n2,b\r\n3,c\r4,d\n", [2, 3, 4, 5], []),  # mixed line endings
        (b"id\n1\n\n3\n4\n\n", [2, 3, 4, 5, 6], []),  # one column: a blank line is a null row
    ],
)
def test_each_row_knows_its_line_and_failed_rows_agree(
    run: Run, tmp_path: Path, data: bytes, rows: list[int], failed: list[int]
) -> None:
    result = run(data)
    assert lines_of(tmp_path) == rows
    assert [line for line, _, _ in failed_rows(result)] == failed
    assert LINE_COLUMN not in typed(result)
    assert all(LINE_COLUMN not in row for row in result.preview)
    text = physical_lines(data)
    for row in copy_rows(tmp_path):  # the file opened at the row's line shows the row
        if row["id"] is not None:
            shown = text[row[LINE_COLUMN] - 1].decode().lstrip("\ufeff")
            assert shown == str(row["id"]) or shown.startswith(f"{row['id']},")


def test_lines_of_a_file_read_in_segments_after_a_broken_quote(run: Run, tmp_path: Path) -> None:
    rows = [b"%d,n%d,%d" % (i, i, i * 10) for i in range(1, 24_001)]
    rows[21_000] = b'21001,"oops,1'
    data = b"id,name,score\n" + b"\n".join(rows) + b"\n"
    result = run(data)
    assert [line for line, _, _ in failed_rows(result)] == [21_002]
    assert_rows_found_at_their_lines(data, tmp_path)
    assert lines_of(tmp_path)[21_000] == 21_003


@pytest.mark.parametrize("bad", [3, MAX_STEPS + 5])
def test_many_failed_rows_or_quoted_breaks_still_map_every_line(
    run: Run, tmp_path: Path, bad: int
) -> None:
    rows = [f"{i},v{i}" for i in range(1, 5001)]
    for k in range(bad):
        rows[k * 40 + 7] = f"{k * 40 + 8},x,extra"
        rows[k * 40 + 20] = f'{k * 40 + 21},"multi\nline"'
    data = ("id,v\n" + "\n".join(rows) + "\n").encode()
    result = run(data)
    assert result.failed_row_count == bad
    assert_rows_found_at_their_lines(data, tmp_path)
    assert_no_row_lost(result, 5000)


@pytest.mark.parametrize(
    ("data", "fmt", "expected"),
    [
        (b'{"id": 1}\n{"id": 2}\n\n   \n{"id": 3}\n', NDJSON, [1, 2, 5]),
        (b'{"id": 1}\nnot json\n\n{"id": 2}\n{"id": 3}', NDJSON, [1, 4, 5]),
        (b'[{"id": 1},\n\n{"id": 2}, {"id": 3}]', JSON, [1, 2, 3]),  # element index + 1
    ],
)
def test_json_rows_know_their_line_or_element(
    run: Run, tmp_path: Path, data: bytes, fmt: DatasetFormat, expected: list[int]
) -> None:
    run(data, fmt)
    assert lines_of(tmp_path) == expected


def test_parquet_rows_are_numbered_from_one(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"a": [5, 6, 7], "A": ["x", "y", "z"]}), source, row_group_size=2)
    result = ingest(source, PARQUET, tmp_path / "copy.parquet", tmp_path / "work")
    assert [c.name for c in result.columns] == ["a", "A"]  # as the file names them
    assert lines_of(tmp_path) == [1, 2, 3]


def test_utf16_and_gzip_files_count_lines_of_their_text(run: Run, tmp_path: Path) -> None:
    text = "id,v\n1,é\n\n2,ü\n"
    run(text.encode("utf-16"))
    assert lines_of(tmp_path) == [2, 4]
    run(gzip.compress(text.encode()))
    assert lines_of(tmp_path) == [2, 4]


# --- the invariant: no value of a ready dataset fails a later step's conversion ------------


def run_step(
    tmp_path: Path, columns: list[ColumnInfo], processor: str, params: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    out = tmp_path / f"out-{processor}-{len(list(tmp_path.glob('out-*')))}"
    out.mkdir()
    step = StepInput(
        parquet_path=tmp_path / "copy.parquet",
        columns=columns,
        dataset_format=DatasetFormat.csv,
        output_dir=out,
        artifact_suffix="",
        report=lambda fraction, message: None,
        limits=ComputeLimits(threads=2),
    )
    found = get_processor(processor)
    assert found is not None
    # As the job engine does (use_cases.run_job._compute): run under the copy's names.
    renames = copy_renames(columns)
    copy = copy_columns(columns, renames)
    step = replace(step, columns=copy)
    output = found.run(step, validate_step(processor, renamed(params, renames), copy))
    return with_dataset_names(output, renames).summary, out


def hostile_files() -> list[tuple[str, bytes, DatasetFormat]]:
    """The ready files of the hostile corpus, and files of every typing edge above."""
    files = [(c.name, c.data, c.fmt) for c in CASES if isinstance(c.expect, Ready)]
    files += [
        ("special floats", b"x\ninf\n-inf\nnan\nInfinity\n", CSV),
        ("dates with infinity", b"d\n2020-01-01\n-infinity\ninfinity\n", CSV),
        ("timestamps with epoch", b"t\n2020-01-01 10:00:00\nepoch\n", CSV),
        ("times with allballs", b"t\n10:00:00\nallballs\n", CSV),
        ("null tokens", b"n,d,b\n1,2020-01-01,true\nNA,N/A,null\n", CSV),
        ("plus signs", b"a,b\n+3,+inf\n-2,1e308\n", CSV),
        ("wide integers", b"a,b,c\n18446744073709551615,18446744073709551616,-1\n0,1,2\n", CSV),
        ("empty column", b"a,b\n1,\n2,\n", CSV),
        ("case names", b"a,A,a\n1,2,3\n", CSV),
        ("json dates", b'{"d": "2020-01-01", "e": null}\n{"d": "infinity", "e": null}\n', NDJSON),
        ("extremes", b"f,i\n1.7976931348623157e308,-9223372036854775808\n5e-324,0\n", CSV),
    ]
    return files


@pytest.mark.parametrize("name, data, fmt", hostile_files(), ids=[f[0] for f in hostile_files()])
def test_metrics_and_a_csv_output_run_on_every_typed_column(
    tmp_path: Path, name: str, data: bytes, fmt: DatasetFormat
) -> None:
    source = tmp_path / f"source.{fmt}"
    source.write_bytes(data)
    result = ingest(source, fmt, tmp_path / "copy.parquet", tmp_path / "work")
    if not result.columns or result.row_count == 0:
        return
    # The copy's own names: what a step addresses once it maps the dataset's (see the xfail).
    stored = storage_names([c.name for c in result.columns])
    columns = [
        ColumnInfo(name=s, type=c.type, null_count=c.null_count)
        for s, c in zip(stored, result.columns, strict=True)
    ]
    summary, _ = run_step(tmp_path, columns, "metrics", {})
    assert set(summary["columns"]) == set(stored)
    run_step(tmp_path, columns, "normalize", {"output_format": "csv"})
    run_step(tmp_path, columns, "normalize", {"output_format": "json"})


def test_the_copy_lists_no_line_column_anywhere_it_is_read(run: Run, tmp_path: Path) -> None:
    result = run(b"id,v\n1,a\n2,b\n")
    assert [c.name for c in result.columns] == ["id", "v"]
    assert set(result.preview[0]) == {"id", "v"}
    _, out = run_step(tmp_path, result.columns, "normalize", {"output_format": "csv"})
    assert pd.read_csv(out / "normalized.csv").columns.tolist() == ["id", "v"]
    assert np.array_equal(pq.read_table(tmp_path / "copy.parquet")[LINE_COLUMN], [2, 3])
