"""The design-matrix reader equals pandas' dropna / fillna / get_dummies / Categorical codes."""

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.processing.processors.base import (
    ComputeLimits,
    JobCancelled,
    MemoryBudgetExceeded,
    ProcessorInputError,
)
from services.processing.processors.latent import design
from services.processing.processors.latent.design import Item, read_design
from tests.unit.processors.conftest import CancelOnCall
from tests.unit.processors.latent.conftest import Recorder, TableStep

ROWS = 500


def mixed_table(rows: int = ROWS, seed: int = 3) -> pa.Table:
    """Binary ints and booleans, a float with NaN, text and date categories; nulls in some."""
    rng = np.random.default_rng(seed)
    colors = np.array(["red", "green", "blue", "Ärger", "a b"])
    return pa.table(
        {
            "yes": pa.array(rng.integers(0, 2, rows)),
            "flag": pa.array(rng.random(rows) < 0.4, mask=rng.random(rows) < 0.05),
            "score": pa.array(
                np.where(rng.random(rows) < 0.03, np.nan, rng.normal(5, 2, rows)),
                mask=rng.random(rows) < 0.04,
            ),
            "color": pa.array(colors[rng.integers(0, 5, rows)], mask=rng.random(rows) < 0.06),
            "day": pa.array([date(2024, 1, 1 + int(d)) for d in rng.integers(0, 3, rows)]),
            "count": pa.array(rng.integers(0, 5, rows)),
        }
    )


ITEMS = [
    Item("yes", "binary"),
    Item("flag", "binary"),
    Item("score", "numeric"),
    Item("color", "categorical"),
    Item("day", "categorical"),
]


def frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    df["flag"] = df["flag"].astype("float")  # True/False/None -> 1.0/0.0/NaN
    return df


def dummies(df: pd.DataFrame) -> pd.DataFrame:
    """The expected matrix: pandas get_dummies of the categorical columns, in item order."""
    parts = []
    for item in ITEMS:
        s = df[item.column]
        if item.kind == "categorical":
            categories = pd.Categorical(s.astype("string") if s.dtype == object else s)
            parts.append(
                pd.get_dummies(categories, prefix=item.column, prefix_sep="=", dtype=float)
            )
        else:
            parts.append(s.astype(float).to_frame())
    out = pd.concat([p.set_axis(df.index) for p in parts], axis=1)
    return out


def test_drop_rows_equals_pandas_dropna_and_get_dummies(table_step: TableStep) -> None:
    table = mixed_table()
    df = frame(table)
    report = Recorder()
    got = read_design(table_step(table, report=report), ITEMS, nulls="drop_rows")
    kept = df.dropna(subset=[i.column for i in ITEMS])
    expected = dummies(kept)
    assert got.names == [str(c) for c in expected.columns]
    np.testing.assert_array_equal(got.values, expected.to_numpy())
    np.testing.assert_array_equal(got.rows, kept.index.to_numpy() + 1)
    assert got.dropped == len(df) - len(kept) > 0
    assert got.levels["color"] == sorted(df["color"].dropna().unique())
    assert got.levels["day"] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert got.values.flags.c_contiguous and got.values.dtype == np.float64
    assert report.calls and report.calls[-1][0] == pytest.approx(1.0)
    assert got.summary() == {"rows": len(kept), "dropped_rows": got.dropped}


def test_codes_equal_pandas_categorical_codes(table_step: TableStep) -> None:
    table = mixed_table()
    df = frame(table).dropna(subset=[i.column for i in ITEMS])
    got = read_design(table_step(table), ITEMS, nulls="drop_rows", encoding="codes")
    assert got.names == [i.column for i in ITEMS]
    np.testing.assert_array_equal(got.values[:, 3], pd.Categorical(df["color"]).codes)
    np.testing.assert_array_equal(got.values[:, 4], pd.Categorical(df["day"]).codes)
    assert got.spans()["day"] == slice(4, 5)


def test_fill_uses_the_mean_and_the_smallest_mode(table_step: TableStep) -> None:
    table = mixed_table()
    df = frame(table)
    got = read_design(table_step(table), ITEMS, nulls="fill")
    filled = df.copy()
    filled["score"] = df["score"].fillna(df["score"].mean())
    filled["flag"] = df["flag"].fillna(df["flag"].mode().iloc[0])
    filled["color"] = df["color"].fillna(df["color"].mode().iloc[0])
    expected = dummies(filled)
    assert got.names == [str(c) for c in expected.columns]
    np.testing.assert_allclose(got.values, expected.to_numpy(), rtol=1e-14)
    np.testing.assert_array_equal(got.rows, np.arange(1, ROWS + 1))
    assert got.filled == {
        "flag": int(df["flag"].isna().sum()),
        "score": int(df["score"].isna().sum()),
        "color": int(df["color"].isna().sum()),
    }
    assert got.fill_values["color"] == df["color"].mode().iloc[0]
    assert got.summary()["filled"]["score"]["value"] == pytest.approx(df["score"].mean())


def test_a_mode_tie_fills_with_the_smallest_value(table_step: TableStep) -> None:
    table = pa.table({"c": ["b", "a", "b", "a", None], "x": pa.array([1, 0, 1, 0, None])})
    items = [Item("c", "categorical"), Item("x", "binary")]
    got = read_design(table_step(table), items, nulls="fill", encoding="codes")
    assert got.fill_values == {"c": "a", "x": 0}
    np.testing.assert_array_equal(got.values[4], [0, 0])


def test_fail_names_the_first_null(table_step: TableStep) -> None:
    table = pa.table({"a": pa.array([1, 0, 1, None]), "b": pa.array([0, None, 1, 1])})
    items = [Item("a", "binary"), Item("b", "binary")]
    with pytest.raises(ProcessorInputError) as failed:
        read_design(table_step(table), items, nulls="fail")
    assert (failed.value.column, failed.value.row) == ("b", 2)
    assert "'b'" in failed.value.message and "row 2" in failed.value.message
    got = read_design(table_step(table.slice(0, 1)), items, nulls="fail")
    np.testing.assert_array_equal(got.values, [[1, 0]])


def test_a_float_nan_is_a_null(table_step: TableStep) -> None:
    table = pa.table({"x": pa.array([1.0, np.nan, 0.0])})
    got = read_design(table_step(table), [Item("x", "binary")], nulls="drop_rows")
    np.testing.assert_array_equal(got.rows, [1, 3])
    with pytest.raises(ProcessorInputError, match="row 2"):
        read_design(table_step(table), [Item("x", "binary")], nulls="fail")
    levels = read_design(table_step(table), [Item("x", "categorical")], nulls="drop_rows")
    assert levels.names == ["x=0.0", "x=1.0"]


@pytest.mark.parametrize("value", [2, -1])
def test_a_binary_item_must_hold_0_or_1(table_step: TableStep, value: int) -> None:
    table = pa.table({"ok": [0, 1, 1, 0], "item": pa.array([0, 1, None, value])})
    items = [Item("ok", "binary"), Item("item", "binary")]
    with pytest.raises(ProcessorInputError) as failed:
        read_design(table_step(table), items, nulls="drop_rows")
    assert (failed.value.column, failed.value.row) == ("item", 4)
    assert f"holds {value} at row 4" in failed.value.message


def test_a_nonnegative_item_refuses_negative_values(table_step: TableStep) -> None:
    table = pa.table({"x": [0.5, 2.0, -0.25]})
    with pytest.raises(ProcessorInputError) as failed:
        read_design(table_step(table), [Item("x", "numeric", nonnegative=True)], nulls="fail")
    assert (failed.value.column, failed.value.row) == ("x", 3)
    assert "-0.25" in failed.value.message
    got = read_design(table_step(table), [Item("x", "numeric")], nulls="fail")
    np.testing.assert_array_equal(got.values[:, 0], [0.5, 2.0, -0.25])


def test_the_matrix_must_fit_the_numpy_budget(table_step: TableStep) -> None:
    table = pa.table({f"i{j}": np.zeros(1000, dtype=np.int64) for j in range(4)})
    items = [Item(f"i{j}", "binary") for j in range(4)]
    limits = ComputeLimits(threads=2, batch_memory_bytes=32_000 + 1000 * 16 - 1)
    with pytest.raises(MemoryBudgetExceeded) as refused:
        read_design(table_step(table, limits=limits), items, nulls="fail", extra_bytes_per_row=16)
    text = str(refused.value)
    assert "1,000 rows x 4 columns" in text and "1 MiB" in text and "numpy limit" in text
    limits = ComputeLimits(threads=2, batch_memory_bytes=32_000 + 1000 * 16)
    got = read_design(table_step(table, limits=limits), items, nulls="fail", extra_bytes_per_row=16)
    assert got.values.shape == (1000, 4)


def test_an_identifier_is_not_a_categorical_item(
    table_step: TableStep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(design, "MAX_LEVELS", 3)
    table = pa.table({"id": ["a", "b", "c", "d"]})
    with pytest.raises(ProcessorInputError, match="more than 3 distinct values") as failed:
        read_design(table_step(table), [Item("id", "categorical")], nulls="fail")
    assert failed.value.column == "id"


def test_no_rows_left_is_an_error(table_step: TableStep) -> None:
    table = pa.table({"a": pa.array([1, None]), "b": pa.array([None, 0])})
    with pytest.raises(ProcessorInputError, match="no rows left"):
        read_design(
            table_step(table), [Item("a", "binary"), Item("b", "binary")], nulls="drop_rows"
        )
    with pytest.raises(ProcessorInputError, match="no values to fill"):
        read_design(
            table_step(pa.table({"a": pa.array([None, None], pa.int64())})),
            [Item("a", "numeric")],
            nulls="fill",
        )


def test_many_columns_are_read_a_batch_at_a_time(
    table_step: TableStep, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = mixed_table(rows=70_000)  # more rows than one record batch
    expected = read_design(table_step(table), ITEMS, nulls="drop_rows")
    monkeypatch.setattr(design, "scan_width", lambda step: 2)
    monkeypatch.setattr(design, "FETCH_ROWS", 5000)
    got = read_design(table_step(table), ITEMS, nulls="drop_rows")
    np.testing.assert_array_equal(got.values, expected.values)
    np.testing.assert_array_equal(got.rows, expected.rows)
    df = frame(table).dropna(subset=[i.column for i in ITEMS])
    np.testing.assert_array_equal(got.values, dummies(df).to_numpy())


@pytest.mark.parametrize("call", [1, 2, 3])
def test_cancel_stops_the_read(table_step: TableStep, call: int) -> None:
    with pytest.raises(JobCancelled):
        read_design(table_step(mixed_table(), report=CancelOnCall(call)), ITEMS, nulls="drop_rows")


@pytest.mark.parametrize("encoding", ["onehot", "codes"])
def test_levels_held_only_by_dropped_rows_are_left_out(
    table_step: TableStep, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    monkeypatch.setattr(design, "FETCH_ROWS", 3)  # compaction in several blocks
    table = pa.table(
        {
            "a": ["x", "gone", "y", "z", "x", "y", "z", "x"],
            "b": pa.array([1, None, 0, 1, 0, 1, None, 1]),
            "c": ["p", "q", "q", "p", "p", "q", "only", "p"],
        }
    )
    items = [Item("a", "categorical"), Item("b", "binary"), Item("c", "categorical")]
    got = read_design(table_step(table), items, nulls="drop_rows", encoding=encoding)  # type: ignore[arg-type]
    df = table.to_pandas().dropna()
    assert got.levels == {"a": ["x", "y", "z"], "c": ["p", "q"]}
    if encoding == "codes":
        expected = np.column_stack(
            [pd.Categorical(df["a"]).codes, df["b"], pd.Categorical(df["c"]).codes]
        )
    else:
        expected = pd.get_dummies(df, columns=["a", "c"], prefix_sep="=", dtype=float)
        expected = expected[got.names].to_numpy()
    np.testing.assert_array_equal(got.values, expected)
    assert got.values.flags.c_contiguous
