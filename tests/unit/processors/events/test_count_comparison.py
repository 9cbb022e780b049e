"""count_comparison equals pandas: Period counts by groupby, the latest complete period and the
same period of earlier years, changes and percent changes."""

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError
from services.processing.processors.events import count_comparison
from services.processing.processors.events.count_comparison import CountComparisonParams
from tests.unit.processors.conftest import CancelOnCall, StepFactory
from tests.unit.processors.events.conftest import Written, to_table

FREQ = {"month": "M", "year": "Y"}


def reference(df: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Rows {(group, period): (count, change, percent_change)} and the periods compared."""
    unit, group = params.get("period", "month"), params.get("group_column")
    ev = df[df["at"].notna()]
    if ev.empty:
        return {"periods": [], "rows": {}}
    periods_of = ev["at"].dt.to_period(FREQ[unit])
    latest = periods_of.max()
    if ev["at"].max().normalize() < latest.end_time.normalize():
        latest -= 1  # the data end before its last day
    step = 12 if unit == "month" else 1
    periods: list[pd.Period] = []
    while (latest - step * len(periods)).start_time >= ev["at"].min().normalize():
        periods.append(latest - step * len(periods))
    chosen = ev[periods_of.isin(periods)]
    keys = [
        chosen[group] if group else pd.Series(None, index=chosen.index),
        periods_of[chosen.index],
    ]
    sizes = chosen.groupby(keys, dropna=False).size()
    counts = {(None if pd.isna(g) else g, p): int(n) for (g, p), n in sizes.items()}
    rows = {}
    for g_key in {g for g, _ in counts}:
        latest_count = counts.get((g_key, periods[0]), 0)
        for p in periods:
            n = counts.get((g_key, p), 0)
            change = None if p == periods[0] else latest_count - n
            percent = None if change is None or n == 0 else 100.0 * change / n
            rows[(g_key, str(p))] = (n, change, percent)
    return {"periods": [str(p) for p in periods], "rows": rows}


def read_rows(path, group: str | None) -> dict[tuple[Any, str], tuple[Any, ...]]:
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    rows = {}
    for r in frame.to_dict("records"):
        key = (r[group] or None) if group else None
        change = int(r["change"]) if r["change"] else None
        percent = float(r["percent_change"]) if r["percent_change"] else None
        rows[(key, r["period"])] = (int(r["count"]), change, percent)
    return rows


def assert_rows_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (n, change, percent) in want.items():
        assert got[key][:2] == (n, change), key
        assert got[key][2] == (None if percent is None else pytest.approx(percent, rel=1e-12)), key


def planted(seed: int = 8, end: str = "2024-06-10 13:00") -> pd.DataFrame:
    """Events from 2021-03-15 to `end`: a (4 a day, 8 a day from May 2024), b (3 a day),
    None (1 a day); c only until 2022."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2021-03-15", pd.Timestamp(end).normalize())
    stamps, groups = [], []
    for day in days:
        rates = {"a": 8 if day >= pd.Timestamp("2024-05-01") else 4, "b": 3, None: 1}
        if day.year <= 2022:
            rates["c"] = 2
        for group, rate in rates.items():
            for second in rng.integers(0, 86400, rng.poisson(rate)):
                at = day + pd.Timedelta(seconds=int(second))
                if at <= pd.Timestamp(end):
                    stamps.append(at)
                    groups.append(group)
    return pd.DataFrame({"at": pd.Series(stamps, dtype="datetime64[us]"), "grp": groups})


def run(make_step: StepFactory, written: Written, df: pd.DataFrame, **params: Any):
    path, columns = written(to_table(df))
    return count_comparison.run(
        make_step(parquet_path=path, columns=columns), CountComparisonParams(**params)
    )


@pytest.mark.parametrize("unit", ["month", "year"])
def test_groups_equal_pandas(make_step: StepFactory, written: Written, unit: str) -> None:
    df = planted()
    params = {"timestamp_column": "at", "group_column": "grp", "period": unit}
    result = run(make_step, written, df, **params)
    want = reference(df, params)
    assert_rows_equal(read_rows(result.artifacts[0].path, "grp"), want["rows"])
    s = result.summary
    assert [s["latest_period"], *s["compared_periods"]] == want["periods"]
    if unit == "month":  # June 2024 is partial: May, against May 2023, 2022, 2021
        assert want["periods"] == ["2024-05", "2023-05", "2022-05", "2021-05"]
    else:  # 2024 is partial, 2021 starts in March
        assert want["periods"] == ["2023", "2022"]
    assert s["groups"] == len({k[0] for k in want["rows"]})
    detail = {d["grp"]: d for d in s["group_detail"]}
    a = detail["a"]
    assert a["latest"] == want["rows"][("a", want["periods"][0])][0]
    assert [e["percent_change"] for e in a["earlier"]] == [
        pytest.approx(want["rows"][("a", p)][2]) for p in want["periods"][1:]
    ]
    if unit == "month":
        assert all(e["percent_change"] > 50 for e in a["earlier"])  # planted: doubled
        assert "c" in detail and detail["c"]["latest"] == 0  # counted until 2022 only
    lines = result.artifacts[0].path.read_text().splitlines()
    assert lines[0] == "grp,period,count,change,percent_change"
    # Groups by value, null last; the latest period first.
    groups = [line.split(",")[0] for line in lines[1:]]
    assert groups == sorted(groups, key=lambda g: (g == "", g))
    totals = s["total"]
    assert totals["latest"] == sum(
        n for (g, p), (n, _, _) in want["rows"].items() if p == want["periods"][0]
    )


def test_a_month_ending_on_its_last_day_is_complete(
    make_step: StepFactory, written: Written
) -> None:
    df = planted(end="2024-06-30 08:00")  # June's last day: June is complete
    table = to_table(df)
    table = table.set_column(0, "at", table["at"].cast(pa.date32()))  # a date column
    path, columns = written(table)
    result = count_comparison.run(
        make_step(parquet_path=path, columns=columns),
        CountComparisonParams(timestamp_column="at"),
    )
    want = reference(df.assign(at=df["at"].dt.normalize()), {"timestamp_column": "at"})
    assert want["periods"][0] == "2024-06" == result.summary["latest_period"]
    assert_rows_equal(read_rows(result.artifacts[0].path, None), want["rows"])
    total = result.summary["total"]
    assert [e["period"] for e in total["earlier"]] == ["2023-06", "2022-06", "2021-06"]
    assert total["earlier"][0]["change"] == total["latest"] - total["earlier"][0]["count"]


@pytest.mark.parametrize("case", ["empty", "all null", "too short"])
def test_no_complete_period(make_step: StepFactory, written: Written, case: str) -> None:
    stamps = {
        "empty": [],
        "all null": [None, None],
        "too short": [pd.Timestamp("2024-03-03"), pd.Timestamp("2024-03-20")],
    }[case]
    df = pd.DataFrame({"at": pd.Series(stamps, dtype="datetime64[us]"), "grp": ["x"] * len(stamps)})
    result = run(make_step, written, df, timestamp_column="at", group_column="grp")
    s = result.summary
    assert s["latest_period"] is None and s["compared_periods"] == [] and s["groups"] == 0
    assert s["total"] == {"latest": None, "earlier": []}
    assert result.artifacts[0].path.read_text() == "grp,period,count,change,percent_change\n"


def test_nulls_zero_counts_and_escape(make_step: StepFactory, written: Written) -> None:
    df = planted()
    df.loc[df.index[::7], "at"] = pd.NaT
    df["grp"] = df["grp"].replace({"b": "=2+3"})
    result = run(
        make_step, written, df, timestamp_column="at", group_column="grp", csv_formula_escape=True
    )
    assert result.summary["null_timestamps"] == len(df.index[::7])
    want = reference(df, {"timestamp_column": "at", "group_column": "grp"})
    text = result.artifacts[0].path.read_text()
    assert '"\'=2+3",2024-05,' in text
    c_rows = {k: v for k, v in want["rows"].items() if k[0] == "c"}
    assert c_rows[("c", "2024-05")] == (0, None, None)  # no events in May 2024: 0, -100%
    assert c_rows[("c", "2022-05")][2] == -100.0


def test_cancel(make_step: StepFactory, written: Written) -> None:
    path, columns = written(to_table(planted()))
    params = CountComparisonParams(timestamp_column="at", group_column="grp")
    calls = CancelOnCall(0)
    count_comparison.run(make_step(parquet_path=path, columns=columns, report=calls), params)
    for n in range(1, calls.calls + 1):
        with pytest.raises(JobCancelled):
            count_comparison.run(
                make_step(parquet_path=path, columns=columns, report=CancelOnCall(n)), params
            )


COLUMNS = [("at", "timestamp"), ("grp", "string"), ("count", "integer"), ("n", "float")]


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({}, "timestamp_column", "required"),
        ({"timestamp_column": "grp"}, "timestamp_column", "timestamp"),
        ({"timestamp_column": "at", "period": "week"}, "period", "year"),
        ({"timestamp_column": "at", "group_column": "count"}, "group_column", "output column"),
        ({"timestamp_column": "at", "group_column": "x"}, "group_column", "not in"),
        ({"timestamp_column": "at", "extra": 1}, "extra", "Extra inputs"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    from schemas.domain.records import ColumnInfo

    columns = [ColumnInfo(name=n, type=t, null_count=0) for n, t in COLUMNS]
    with pytest.raises(ParamsError) as error:
        registry.validate_step("count_comparison", params, columns)
    assert error.value.field == field
    assert text in error.value.message
