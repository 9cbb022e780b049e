"""metrics equals an independent pandas/numpy computation."""

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from schemas.domain.records import ColumnInfo
from services.processing.processors import numeric
from services.processing.processors.base import JobCancelled
from services.processing.processors.tables import anomalies, metrics
from tests.unit.processors.conftest import CancelOnCall, StepFactory, columns_of, write_parquet

NUMERIC = ["normal", "ties", "constant", "mostly_zero", "count", "big_int"]


def expected_column(s: pd.Series, kind: str) -> dict[str, Any]:
    """What pandas says about one column."""
    out: dict[str, Any] = {
        "null_count": int(s.isna().sum()),
        "null_ratio": float(s.isna().mean()),
        "distinct_count": int(s.nunique()),
    }
    values = s.dropna()
    if kind in ("float", "integer"):
        quartiles = values.quantile([0.25, 0.5, 0.75], interpolation="linear")
        counts, edges = np.histogram(values.to_numpy(dtype=float), bins=10)
        out.update(
            min=values.min(),
            max=values.max(),
            mean=values.mean(),
            std=values.std(ddof=1),
            p25=quartiles[0.25],
            p50=quartiles[0.5],
            p75=quartiles[0.75],
            histogram={"edges": edges.tolist(), "counts": counts.tolist()},
        )
    elif kind in ("timestamp", "date"):
        out.update(min=pd.Timestamp(values.min()), max=pd.Timestamp(values.max()))
    else:
        counts = values.value_counts()
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
        out["top_values"] = [{"value": v, "count": int(n)} for v, n in ranked]
    return out


def assert_column(got: dict[str, Any], want: dict[str, Any], kind: str) -> None:
    assert got["type"] == kind
    for key in ("null_count", "distinct_count"):
        assert got[key] == want[key], key
    assert got["null_ratio"] == pytest.approx(want["null_ratio"], rel=1e-12)
    if kind in ("float", "integer"):
        assert got["min"] == want["min"] and got["max"] == want["max"]
        for key in ("mean", "std", "p25", "p50", "p75"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
        assert got["histogram"]["counts"] == want["histogram"]["counts"]
        assert got["histogram"]["edges"] == pytest.approx(want["histogram"]["edges"], rel=1e-12)
    elif kind in ("timestamp", "date"):
        assert pd.Timestamp(got["min"]) == want["min"]
        assert pd.Timestamp(got["max"]) == want["max"]
    else:
        assert got["top_values"] == want["top_values"]


def test_every_figure_equals_pandas(
    make_step: StepFactory, dataset: tuple[Path, list[ColumnInfo]], data_size: str
) -> None:
    path, columns = dataset
    df = pd.read_parquet(path)
    result = metrics.run(make_step(), metrics.MetricsParams())
    summary = result.summary
    assert result.artifacts == []
    assert summary["row_count"] == len(df)
    assert summary["column_count"] == len(df.columns)
    assert summary["duplicate_rows"] == int(df.duplicated().sum()) > 0
    assert list(summary["columns"]) == list(df.columns)
    for column in columns:
        want = expected_column(df[column.name], column.type)
        assert_column(summary["columns"][column.name], want, column.type)


def test_selected_columns_and_their_duplicates(
    make_step: StepFactory, dataset: tuple[Path, list[ColumnInfo]]
) -> None:
    df = pd.read_parquet(dataset[0])
    selected = ["count", "flag", "category"]
    summary = metrics.run(make_step(), metrics.MetricsParams(columns=selected)).summary
    assert list(summary["columns"]) == selected
    assert summary["column_count"] == 3
    assert summary["duplicate_rows"] == int(df[selected].duplicated().sum())
    # One float column: the duplicate count is pruned by its repeated values.
    summary = metrics.run(make_step(), metrics.MetricsParams(columns=["normal"])).summary
    assert summary["duplicate_rows"] == int(df[["normal"]].duplicated().sum())


def test_histogram_edges_and_constant_column(make_step: StepFactory) -> None:
    summary = metrics.run(make_step(), metrics.MetricsParams(columns=["constant"])).summary
    constant = summary["columns"]["constant"]
    assert constant["std"] == 0.0 and constant["distinct_count"] == 1
    assert constant["histogram"]["edges"][0] == 6.75 and constant["histogram"]["edges"][-1] == 7.75
    assert sum(constant["histogram"]["counts"]) == 3000 - constant["null_count"]


def test_empty_and_all_null(tmp_path: Path, make_step: StepFactory) -> None:
    table = pa.table(
        {
            "x": pa.array([None, None], type=pa.float64()),
            "s": pa.array([None, None], type=pa.string()),
        }
    )
    path = write_parquet(table, tmp_path / "nulls.parquet")
    summary = metrics.run(
        make_step(parquet_path=path, columns=columns_of(table)), metrics.MetricsParams()
    ).summary
    x = summary["columns"]["x"]
    assert x["null_count"] == 2 and x["null_ratio"] == 1.0 and x["distinct_count"] == 0
    assert x["mean"] is None and x["std"] is None and x["p50"] is None and x["histogram"] is None
    assert summary["columns"]["s"]["top_values"] == []
    assert summary["duplicate_rows"] == 1

    empty = write_parquet(table.slice(0, 0), tmp_path / "empty.parquet")
    summary = metrics.run(
        make_step(parquet_path=empty, columns=columns_of(table)), metrics.MetricsParams()
    ).summary
    assert summary["row_count"] == 0 and summary["duplicate_rows"] == 0
    assert summary["columns"]["x"]["null_ratio"] is None


def test_progress_is_reported_in_order(make_step: StepFactory) -> None:
    seen: list[float] = []
    metrics.run(make_step(report=lambda f, m: seen.append(f)), metrics.MetricsParams())
    assert seen and seen == sorted(seen) and seen[0] >= 0.0 and seen[-1] <= 1.0


@pytest.mark.parametrize("fail_on_call", [1, 2, 3])
def test_cancel_stops_the_run(make_step: StepFactory, fail_on_call: int) -> None:
    report = CancelOnCall(fail_on_call)

    with pytest.raises(JobCancelled):
        metrics.run(make_step(report=report), metrics.MetricsParams())
    assert report.calls == fail_on_call


def test_profiles_from_an_earlier_step_give_the_same_figures(
    make_step: StepFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = metrics.run(make_step(), metrics.MetricsParams()).summary
    # A job keeps a column's repeated values only when few: here none are kept.
    monkeypatch.setattr(numeric, "CACHED_DUP_KEYS", 0)
    profiles = numeric.ProfileCache()
    anomalies.run(make_step(profiles=profiles), anomalies.AnomaliesParams(method="iqr"))
    kept = [profiles.get(name) for name in NUMERIC]
    assert all(p is not None and p.stats.dup_keys is None for p in kept)
    assert metrics.run(make_step(profiles=profiles), metrics.MetricsParams()).summary == alone


def _stamps(seconds: list[int | None], unit: str) -> pa.Array:
    base = datetime(2024, 1, 1)
    values = [None if s is None else base + timedelta(seconds=s) for s in seconds]
    return pa.array(values, type=pa.timestamp(unit))


# Rows 0-1 and 2-3 are duplicates; few key values repeat, so the key narrows the count.
KEY_SECONDS = [1, 1, None, None, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize(
    "key",
    [
        pa.array(range(10), type=pa.int64()),  # unique: no row can have a twin
        pa.array(KEY_SECONDS, type=pa.int64()),
        _stamps(KEY_SECONDS, "us"),
        _stamps(KEY_SECONDS, "ns"),  # compared through its own type, not as integers
    ],
    ids=["unique", "repeated-int", "repeated-timestamp", "repeated-timestamp-ns"],
)
def test_duplicate_rows_narrowed_by_key_columns(
    tmp_path: Path, make_step: StepFactory, key: pa.Array, data_size: str
) -> None:
    x = [0.5, 0.5, float("nan"), None, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    table = pa.table(
        {
            "key": key,
            "x": pa.array(x, type=pa.float64()),
            "s": pa.array(["a", "a", None, None, "b", "b", "c", "c", "d", "d"]),
        }
    )
    path = write_parquet(table, tmp_path / "dups.parquet")
    summary = metrics.run(
        make_step(parquet_path=path, columns=columns_of(table)), metrics.MetricsParams()
    ).summary
    assert summary["duplicate_rows"] == int(table.to_pandas().duplicated().sum())


def test_types_numpy_does_not_fetch_as_stored_give_the_same_figures_on_both_paths(
    tmp_path: Path, make_step: StepFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small data is profiled from numpy arrays; these columns' figures come from DuckDB there too.
    base = datetime(2024, 1, 1)
    stamps = [base + timedelta(hours=h % 7) if h % 5 else None for h in range(40)]
    table = pa.table(
        {
            "ns": pa.array(stamps, type=pa.timestamp("ns")),
            "utc": pa.array(stamps, type=pa.timestamp("us", tz="UTC")),
            "clock": pa.array([s.time() if s else None for s in stamps], type=pa.time64("us")),
            "money": pa.array(
                [None if h % 6 == 0 else Decimal(h % 4) / 4 for h in range(40)],
                type=pa.decimal128(10, 2),
            ),
        }
    )
    path = write_parquet(table, tmp_path / "types.parquet")
    kinds = {"ns": "timestamp", "utc": "timestamp", "clock": "time", "money": "decimal"}
    columns = [ColumnInfo(name=n, type=t, null_count=table[n].null_count) for n, t in kinds.items()]

    def summary() -> dict[str, Any]:
        step = make_step(parquet_path=path, columns=columns)
        return metrics.run(step, metrics.MetricsParams()).summary

    small = summary()
    monkeypatch.setattr(metrics, "SMALL_VALUES", 0)
    assert summary() == small
    df = table.to_pandas()
    assert small["duplicate_rows"] == int(df.duplicated().sum()) > 0
    assert small["columns"]["utc"]["min"] == "2024-01-01T00:00:00+00:00"
    for name in kinds:
        assert small["columns"][name]["null_count"] == int(df[name].isna().sum())
        assert small["columns"][name]["distinct_count"] == df[name].nunique()
