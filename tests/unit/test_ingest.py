"""Dataset ingest: shared behaviour, Parquet input, results and the failed-rows file.

CSV and JSON specifics are in test_ingest_csv.py and test_ingest_json.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.datasets.ingest import (
    PARQUET_COPY_OPTIONS,
    PREVIEW_ROWS,
    DatasetUnusable,
    IngestResult,
    ingest,
    iter_failed_rows,
)
from services.processing.datasets.parquet_reader import friendly_type

Ingest = Callable[..., IngestResult]
STAMP = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def ingester(tmp_path: Path) -> Ingest:
    """A function that ingests bytes (or an existing file) and returns the result."""

    def _run(data: bytes | Path, fmt: DatasetFormat = DatasetFormat.csv) -> IngestResult:
        source = data if isinstance(data, Path) else tmp_path / f"source.{fmt}"
        if not isinstance(data, Path):
            source.write_bytes(data)
        return ingest(source, fmt, tmp_path / "copy.parquet", tmp_path / "work")

    return _run


@pytest.fixture
def run(tmp_path: Path) -> Ingest:
    return ingester(tmp_path)


def failed_rows(result: IngestResult) -> list[tuple[int, str, str]]:
    if result.failed_rows_path is None:
        return []
    return [row for batch in iter_failed_rows(result.failed_rows_path) for row in batch]


def data_records(text: bytes) -> int:
    """The records of a CSV text without quoted line breaks: its non-empty lines after the
    header (CRLF, LF and CR all end a line; a BOM and blank lines before the header are not
    records, and DuckDB skips empty lines between rows)."""
    lines = text.removeprefix(b"\xef\xbb\xbf").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    return sum(1 for line in lines[1:] if line)


def assert_no_row_lost(result: IngestResult, records: int) -> None:
    """Every record of the file is a row of the copy or a failed row: none is lost silently."""
    assert result.failed_row_count == len(failed_rows(result))
    assert result.row_count + result.failed_row_count == records, (
        f"{result.row_count} rows + {result.failed_row_count} failed rows != {records} records"
    )


@pytest.mark.parametrize("fmt", list(DatasetFormat))
@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n  "])
def test_empty_or_blank_file_is_unusable(run: Ingest, fmt: DatasetFormat, data: bytes) -> None:
    expected = r"^file is empty$"
    if fmt is DatasetFormat.parquet and data:
        expected = r"^not a Parquet file: "
    with pytest.raises(DatasetUnusable, match=expected):
        run(data, fmt)


def test_bom_only_file_is_empty(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable, match=r"^file is empty$"):
        run(b"\xef\xbb\xbf\n")


@pytest.mark.parametrize("fmt", [DatasetFormat.csv, DatasetFormat.json, DatasetFormat.ndjson])
def test_latin1_file_names_line_column_and_offset(run: Ingest, fmt: DatasetFormat) -> None:
    data = {
        DatasetFormat.csv: b"name,city\nbob,paris\nann,caf\xe9\n",
        DatasetFormat.json: b'[{"a": 1},\n{"a": 2},\n{"a": "caf\xe9"}]',
        DatasetFormat.ndjson: b'{"a": 1}\n{"a": 2}\n{"a": "caf\xe9"}\n',
    }[fmt]
    bad = data.index(b"\xe9")
    column = bad - data.rindex(b"\n", 0, bad)
    with pytest.raises(DatasetUnusable) as info:
        run(data, fmt)
    assert str(info.value) == (
        f"file is not valid UTF-8: invalid byte 0xe9 at line 3, column {column} "
        f"(byte offset {bad}); re-encode the file as UTF-8 (for example from Latin-1 "
        "or Windows-1252) and upload it again"
    )


def test_utf8_check_spans_chunks(run: Ingest) -> None:
    """A multi-byte character split by the 1 MiB read is fine; a bad byte later is found."""
    row = "x,é\n".encode()  # 5 bytes: chunks of 1 MiB split some "é" in two
    body = b"a,b\n" + row * 300_000
    assert run(body).row_count == 300_000
    with pytest.raises(DatasetUnusable, match=r"line 300002, column 3 \(byte offset 1500006\)"):
        run(body + b"y,\xff\n")


@pytest.mark.parametrize("newline", [b"\n", b"\r"])
def test_utf8_error_line_is_counted_over_every_chunk(run: Ingest, newline: bytes) -> None:
    # Blank lines before the header and 3 MiB of rows: the line numbers come from several reads.
    body = newline * 3 + b"a,b" + newline + (b"1,plain ascii" + newline) * 250_000
    result = run(body)
    assert result.row_count == 250_000
    bad = len(body) + 2
    with pytest.raises(DatasetUnusable, match=rf"line 250005, column 3 \(byte offset {bad}\)"):
        run(body + b"y,\xe9" + newline)


def test_truncated_multibyte_at_end_of_file(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable, match=r"invalid byte 0xc3 at line 2, column 3 "):
        run(b"a,b\n1,\xc3")


def test_parquet_round_trip_types_nulls_and_json_safe_preview(run: Ingest, tmp_path: Path) -> None:
    table = pa.table(
        {
            "i": pa.array([1, None, 3], pa.int32()),
            "f": [1.5, float("nan"), float("inf")],
            "dec": pa.array([Decimal("1.25"), None, Decimal("-2.50")], pa.decimal128(10, 2)),
            "ts": pa.array([STAMP] * 3, pa.timestamp("us", "UTC")),
            "naive": pa.array([datetime(2024, 1, 2, 3, 4, 5)] * 3, pa.timestamp("ms")),
            "d": [date(2024, 1, 2), None, None],
            "b": [True, False, None],
            "s": ["x", None, "z"],
            "l": [[1, 2], [], None],
        }
    )
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)

    result = run(source, DatasetFormat.parquet)

    assert result.row_count == 3 and result.failed_row_count == 0
    assert result.failed_rows_path is None
    assert [(c.name, c.type, c.null_count) for c in result.columns] == [
        ("i", "integer", 1),
        ("f", "float", 1),  # the NaN, as pandas' isna() counts it
        ("dec", "decimal", 1),
        ("ts", "timestamp", 0),
        ("naive", "timestamp", 0),
        ("d", "date", 2),
        ("b", "boolean", 1),
        ("s", "string", 1),
        ("l", "bigint[]", 1),
    ]
    first, second, third = result.preview
    assert first == {
        "i": 1,
        "f": 1.5,
        "dec": "1.25",
        "ts": "2024-01-02T03:04:05+00:00",
        "naive": "2024-01-02T03:04:05",
        "d": "2024-01-02",
        "b": True,
        "s": "x",
        "l": [1, 2],
    }
    assert second["f"] is None and third["f"] is None  # NaN and inf
    orjson.dumps(result.preview)  # JSON-safe throughout


def test_parquet_copy_is_lz4_with_fixed_row_groups(run: Ingest, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"x": np.arange(300_000)}), source, row_group_size=1000)
    result = run(source, DatasetFormat.parquet)
    meta = pq.read_metadata(tmp_path / "copy.parquet")
    assert result.row_count == meta.num_rows == 300_000
    assert meta.num_row_groups == 5  # ROW_GROUP_SIZE 61440, whatever the source's
    assert meta.row_group(0).column(0).compression.startswith("LZ4")  # faster to decode
    assert len(result.preview) == PREVIEW_ROWS


_SUMMARY_COLUMNS = """
    CASE WHEN i % 3 = 0 THEN NULL ELSE i % 100 END::TINYINT AS t,
    CASE WHEN i % 5 = 0 THEN NULL ELSE i END::HUGEINT AS h,
    CASE WHEN i % 7 = 0 THEN NULL ELSE i END::UBIGINT AS ub,
    CASE WHEN i % 2 = 0 THEN NULL WHEN i % 3 = 0 THEN 'nan'::DOUBLE ELSE i END AS nan_is_null,
    CASE WHEN i % 5 = 0 THEN 'nan'::FLOAT ELSE i END::FLOAT AS nan_float,
    NULL::VARCHAR AS all_null,
    CASE WHEN i % 11 = 0 THEN NULL WHEN i % 1000 = 1 THEN repeat('x', 20000) END AS long_text,
    CASE WHEN i % 13 = 0 THEN NULL ELSE i::DECIMAL(38, 3) END AS dec,
    CASE WHEN i % 4 = 0 THEN NULL ELSE i % 2 = 0 END AS b,
    CASE WHEN i % 4 = 1 THEN NULL ELSE TIMESTAMPTZ '2020-01-01 00:00:00+00' END AS tz,
    CASE WHEN i % 4 = 2 THEN NULL ELSE TIME '12:00:00' END AS tm,
    CASE WHEN i % 4 = 3 THEN NULL ELSE INTERVAL 1 DAY END AS iv,
    CASE WHEN i % 6 = 3 THEN NULL ELSE uuid() END AS u,
    CASE WHEN i % 6 = 1 THEN NULL ELSE DATE '2020-01-01' END AS dt,
    CASE WHEN i % 9 = 1 THEN NULL ELSE {'a': CASE WHEN i % 2 = 0 THEN i END} END AS st,
    CASE WHEN i % 9 = 2 THEN NULL ELSE 7 END AS "st, a",
    CASE WHEN i % 9 = 3 THEN NULL ELSE [i, NULL] END AS li,
    CASE WHEN i % 9 = 4 THEN NULL ELSE 'x' END AS "odd ""name"".with, chars é"
"""


@pytest.mark.parametrize("rows", [0, 1, 250_000])
def test_summary_null_counts_equal_a_full_scan(tmp_path: Path, rows: int) -> None:
    # Flat columns are counted from the footer, the rest by a scan: both must be exact, NaN
    # counted as null in float columns.
    from services.processing.datasets.ingest import connect
    from services.processing.datasets.parquet_reader import summarize

    con = connect(tmp_path)
    copy = tmp_path / "copy.parquet"
    con.execute(
        f"COPY (SELECT {_SUMMARY_COLUMNS} FROM range({rows}) r(i)) TO '{copy}' "
        f"({PARQUET_COPY_OPTIONS})"
    )
    described = con.execute(f"DESCRIBE SELECT * FROM '{copy}'").fetchall()
    names = [row[0] for row in described]
    quoted = ['"' + n.replace('"', '""') + '"' for n in names]
    counts = ", ".join(
        f"count(*) - count({q})"
        + (f" + count(*) FILTER (WHERE isnan({q}))" if kind in ("FLOAT", "DOUBLE") else "")
        for q, (_, kind, *_) in zip(quoted, described, strict=True)
    )
    expected = con.execute(f"SELECT count(*), {counts} FROM '{copy}'").fetchone()
    assert expected is not None

    result = summarize(con, copy, 0, None)

    assert result.row_count == expected[0] == rows
    assert [(c.name, c.null_count) for c in result.columns] == list(
        zip(names, expected[1:], strict=True)
    )
    if rows == 250_000:
        by_name = {c.name: c.null_count for c in result.columns}
        assert by_name["all_null"] == rows
        assert by_name["nan_is_null"] == 125_000 + 41_667  # nulls, then NaN at odd i % 3 == 0
        assert by_name["nan_float"] == 50_000
    assert len(result.preview) == min(rows, PREVIEW_ROWS)


def test_not_parquet_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable) as info:
        run(b"id,name\n1,x\n", DatasetFormat.parquet)
    assert str(info.value) == (
        "not a Parquet file: the PAR1 magic bytes are missing at the start of the file"
    )


def test_corrupt_parquet_is_unusable(run: Ingest) -> None:
    with pytest.raises(DatasetUnusable, match=r"^not a readable Parquet file: "):
        run(b"PAR1" + b"\x00" * 64 + b"PAR1", DatasetFormat.parquet)


def test_failed_rows_file_and_batches(run: Ingest) -> None:
    lines = [b"a,b"] + [b"%d,%d" % (i, i) if i % 3 else b"%d" % i for i in range(1, 2501)]
    result = run(b"\n".join(lines) + b"\n")

    assert result.failed_row_count == 833
    assert result.failed_rows_path is not None
    schema = pq.read_schema(result.failed_rows_path)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("line_number", "int64"),
        ("raw_text", "string"),
        ("reason", "string"),
    ]
    batches = list(iter_failed_rows(result.failed_rows_path, batch_size=100))
    assert [len(b) for b in batches] == [100] * 8 + [33]
    rows = [row for batch in batches for row in batch]
    assert [line for line, _, _ in rows] == [i + 1 for i in range(3, 2501, 3)]
    assert rows[0] == (4, "3", "expected 2 fields, found 1")


def test_raw_text_is_truncated_to_64_kib(run: Ingest) -> None:
    field = "é" * 50_000  # 100,000 bytes
    result = run(f"a,b\n1,2\n3,{field},extra\n".encode())
    ((line, raw, reason),) = failed_rows(result)
    assert (line, reason) == (3, "expected 2 fields, found 3")
    size = len(f"3,{field},extra".encode())
    head, marker = raw.split("…")
    assert len(head.encode()) <= 65_536 and head.startswith("3,éé")
    assert marker == f" [truncated, {size} bytes]"


@pytest.mark.parametrize(
    ("duckdb_type", "friendly"),
    [
        ("TINYINT", "integer"),
        ("UBIGINT", "integer"),
        ("HUGEINT", "integer"),
        ("DOUBLE", "float"),
        ("FLOAT", "float"),
        ("DECIMAL(18,3)", "decimal"),
        ("BOOLEAN", "boolean"),
        ("VARCHAR", "string"),
        ("DATE", "date"),
        ("TIMESTAMP", "timestamp"),
        ("TIMESTAMP WITH TIME ZONE", "timestamp"),
        ("TIMESTAMP_NS", "timestamp"),
        ("TIME", "time"),
        ("STRUCT(a BIGINT)", "struct(a bigint)"),
        ("BIGINT[]", "bigint[]"),
        ("JSON", "json"),
    ],
)
def test_friendly_type(duckdb_type: str, friendly: str) -> None:
    assert friendly_type(duckdb_type) == friendly


@pytest.mark.slow
def test_one_million_row_csv_speed(run: Ingest, tmp_path: Path) -> None:
    n = 1_000_000
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "x": rng.normal(size=n),
            "y": rng.integers(0, 1000, n),
            "name": pd.Series(rng.integers(0, 5000, n)).map("name_{}".format),
            "day": pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(n) % 1000, "D"),
            "flag": np.arange(n) % 2 == 0,
        }
    )
    source = tmp_path / "big.csv"
    frame.to_csv(source, index=False, date_format="%Y-%m-%d")
    started = time.perf_counter()
    result = run(source)
    elapsed = time.perf_counter() - started
    size = source.stat().st_size / 1e6
    print(f"\ningest of a {n}-row, {size:.0f} MB CSV took {elapsed:.2f} s")
    assert result.row_count == n and result.failed_row_count == 0
    assert [c.type for c in result.columns] == [
        "integer", "float", "integer", "string", "date", "boolean",
    ]  # fmt: skip


def test_dedupe_column_names_fills_empty_names_and_renames_exact_repeats_only() -> None:
    from services.processing.datasets.common import dedupe_column_names, storage_names

    names = ["a", "A", " ", "a", "a_1", "b", "__line__"]
    shown = dedupe_column_names(names)
    assert shown == ["a", "A", "column2", "a_1", "a_1_1", "b", "__line___1"]
    # The copy's own names tell columns apart ignoring case, as DuckDB reads them; a column's
    # place in the copy is its place in the dataset.
    stored = storage_names(shown)
    assert stored == ["a", "A_1", "column2", "a_1_1", "a_1_1_1", "b", "__line___1"]
    assert len({name.lower() for name in stored}) == len(stored)
