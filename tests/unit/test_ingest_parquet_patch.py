"""parquet_patch: the footer codec and the joining of columns to the typed copy."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.processing.datasets.common import (
    LINE_COLUMN,
    PARQUET_COPY_OPTIONS,
    Column,
    Lines,
    join_lines,
    line_values,
)
from services.processing.datasets.parquet_patch import (
    PatchError,
    decode,
    encode,
    merge,
    read_footer,
    row_group_sizes,
)


def footer_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    return data[-8 - length : -8]


def duckdb_copy(path: Path, select: str, rows: int) -> Path:
    duckdb.connect().execute(
        f"COPY (SELECT {select} FROM range({rows}) r(i)) TO '{path}' ({PARQUET_COPY_OPTIONS})"
    )
    return path


MIXED = (
    "i, i * 0.5 AS f, 'v' || i AS s, i % 2 = 0 AS b, DATE '2020-01-01' + i::INT AS d, "
    "{'a': i, 'b': [i, NULL]} AS st, CASE WHEN i % 3 = 0 THEN NULL ELSE i END AS n"
)


@pytest.mark.parametrize("writer", ["duckdb", "pyarrow"])
def test_a_footer_decodes_and_encodes_to_the_same_bytes(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "f.parquet"
    if writer == "duckdb":
        duckdb_copy(path, MIXED, 200_000)
    else:
        table = pa.table({"x": [1.5, None], "s": ["a", "b"], "l": [[1, 2], None]})
        pq.write_table(table, path, row_group_size=1, write_page_index=True)
    raw = footer_bytes(path)
    assert encode(decode(raw)) == raw
    assert encode(read_footer(path, raw=True)[0]) == raw


def test_joined_columns_read_back_in_duckdb_and_pyarrow(tmp_path: Path) -> None:
    copy = duckdb_copy(tmp_path / "copy.parquet", MIXED, 200_000)
    before = pq.read_table(copy)
    sizes = row_group_sizes(copy)
    assert sum(sizes) == 200_000 and len(sizes) > 1
    gone = Column(source="s", kind="VARCHAR", stored="s")  # replaced by an all-null DOUBLE
    lines = Lines(3, steps=((10, 2), (150_000, 1)))
    join_lines(copy, lines, [gone], tmp_path)
    after = pq.read_table(copy)
    assert after.column_names == [*before.column_names, LINE_COLUMN]
    for name in before.column_names:
        if name != "s":
            assert after[name].equals(before[name]), name
    assert after["s"].type == pa.float64() and after["s"].null_count == 200_000
    expected = np.arange(200_000) + 3
    expected[10:] += 2
    expected[150_000:] += 1
    assert np.array_equal(after[LINE_COLUMN].to_numpy(), expected)
    con = duckdb.connect()
    found = con.execute(
        f"SELECT count(*), count(s), min({LINE_COLUMN}), max({LINE_COLUMN}), sum(i), "
        f"count(*) FILTER (WHERE st.a = i) FROM '{copy}'"
    ).fetchone()
    assert found == (200_000, 0, 3, 200_005, sum(range(200_000)), 200_000)
    described = dict(
        (row[0], row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM '{copy}'").fetchall()
    )
    assert described["s"] == "DOUBLE" and described[LINE_COLUMN] == "BIGINT"


def test_a_copy_without_rows_gets_the_column_too(tmp_path: Path) -> None:
    copy = duckdb_copy(tmp_path / "copy.parquet", "i, 'x' AS s", 0)
    join_lines(copy, Lines(2), [], tmp_path)
    assert pq.read_table(copy).column_names == ["i", "s", LINE_COLUMN]
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{copy}'").fetchone() == (0,)


def test_unknown_lines_are_null_and_dense_lines_follow_row_groups(tmp_path: Path) -> None:
    copy = duckdb_copy(tmp_path / "copy.parquet", "i", 150_000)
    join_lines(copy, Lines(None), [], tmp_path)
    assert pq.read_table(copy)[LINE_COLUMN].null_count == 150_000

    every = np.arange(150_000, dtype=np.int64) * 3 + 7

    def dense() -> list[np.ndarray]:
        return [every[i : i + 7000] for i in range(0, len(every), 7000)]

    got = np.concatenate(
        list(line_values(Lines(1, dense=lambda: iter(dense())), [100_000, 50_000]))
    )
    assert np.array_equal(got, every)


def test_files_with_other_row_groups_are_not_joined(tmp_path: Path) -> None:
    copy = duckdb_copy(tmp_path / "copy.parquet", "i", 150_000)
    side = tmp_path / "side.parquet"
    pq.write_table(pa.table({"x": np.arange(150_000)}), side, row_group_size=1000)
    with pytest.raises(PatchError, match="different row groups"):
        merge(copy, side)
    assert pq.read_table(copy).column_names == ["i"]  # untouched
