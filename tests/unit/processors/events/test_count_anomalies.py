"""count_anomalies equals pandas resample/groupby counts with scipy's distributions and
linregress, on generated events with planted bursts, trends and overdispersion."""

import math
from datetime import date, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError
from services.processing.processors.events import count_anomalies
from services.processing.processors.events.count_anomalies import CountAnomaliesParams
from tests.unit.processors.conftest import CancelOnCall, StepFactory
from tests.unit.processors.events.conftest import Written, events, to_table

RULES = {"day": "D", "week": "W-MON", "month": "MS"}
ONE = {
    "day": pd.DateOffset(days=1),
    "week": pd.DateOffset(weeks=1),
    "month": pd.DateOffset(months=1),
}
ALL = "all cells"


def resampled(frame: pd.DataFrame, unit: str) -> pd.Series:
    """Events per period: bins [start, next start) labelled by their start."""
    counts = frame.set_index("at").sort_index().resample(RULES[unit], closed="left", label="left")
    return counts.size()


def cells_of(frame: pd.DataFrame, resolution: int) -> list[str | None]:
    """h3.latlng_to_cell row by row; None where the position is missing or out of range."""
    cells: list[str | None] = []
    for lat, lon in zip(frame["lat"], frame["lon"], strict=True):
        valid = not (pd.isna(lat) or pd.isna(lon)) and -90 <= lat <= 90 and -180 <= lon <= 180
        cells.append(h3.latlng_to_cell(float(lat), float(lon), resolution) if valid else None)
    return cells


def reference(df: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """The expected series, recent-period rows and trends, computed series by series."""
    unit = params.get("period", "week")
    k = params.get("recent_periods", 4)
    threshold = params.get("p_threshold", 0.05)
    min_events = params.get("min_events_for_trend", 4)
    group, h3_params = params.get("group_column"), params.get("h3")
    ev = df[df["at"].notna()].copy()
    out: dict[str, Any] = {"series": {}, "rows": {}, "trends": {}, "partial": None}
    if ev.empty:
        return out
    total = resampled(ev, unit)
    last = total.index.max()
    if unit == "week":
        assert all(day.day_of_week == 0 for day in total.index)  # Mondays
    if len(total) > 1 and not params.get("include_partial_period", False):
        last_day = last + ONE[unit] - pd.Timedelta(days=1)
        if ev["at"].max().normalize() < last_day:
            out["partial"] = (last.date(), int(total.iloc[-1]))
            last = total.index[-2]
    periods = total.index[total.index <= last]
    recent_start = periods[max(len(periods) - k, 0)]
    if h3_params:
        ev["cell"] = cells_of(ev, h3_params["resolution"])
    parts: list[tuple[tuple[Any, ...], pd.DataFrame]] = []
    groups = [(None, ev)] if group is None else list(ev.groupby(group, dropna=False))
    for value, frame in groups:
        key = () if group is None else (None if pd.isna(value) else value,)
        if not h3_params:
            parts.append((key, frame))
            continue
        parts.append(((*key, ALL), frame))
        parts += [((*key, cell), f) for cell, f in frame.groupby("cell")]
    for key, frame in parts:
        counts = resampled(frame, unit)
        counts = counts[counts.index <= last]
        if not (counts > 0).any():
            continue  # its events were all in the partial period
        start = min(counts[counts > 0].index.min(), recent_start)
        full = counts.reindex(pd.date_range(start, last, freq=RULES[unit]), fill_value=0)
        out["series"][key] = full
        base = full[full.index < recent_start].to_numpy(dtype=float)
        recent = full[full.index >= recent_start]
        values = recent.to_numpy()
        expected = p_values = z = np.full(len(values), np.nan)
        if len(base):
            mean = base.mean()
            var = base.var(ddof=1) if len(base) > 1 else np.nan
            expected = np.full(len(values), mean)
            if len(base) > 1 and overdispersed(base):
                r = mean**2 / (var - mean)
                p_values = stats.nbinom.sf(values - 1, r, r / (r + mean))
                z = (values - mean) / math.sqrt(var)
            else:
                p_values = stats.poisson.sf(values - 1, mean)
                z = (values - mean) / math.sqrt(mean) if mean > 0 else np.full(len(values), np.nan)
        for period, c, e, p, zz in zip(recent.index, values, expected, p_values, z, strict=True):
            flagged = bool(p < threshold) if not np.isnan(p) else False
            out["rows"][(*key, period.date())] = (int(c), e, p, zz, flagged)
        if len(values) >= 3 and values.sum() >= min_events:
            fit = stats.linregress(np.arange(len(values)), values)
            out["trends"][key] = (fit.slope, fit.pvalue)
    return out


def overdispersed(base: np.ndarray) -> bool:
    """Sample variance (ddof 1) > mean, decided exactly: in floats one event in n periods has
    a variance a rounding error away from its equal mean, 1/n."""
    x = [int(v) for v in base]
    n = len(x)
    return Fraction(n * sum(v * v for v in x) - sum(x) ** 2, n * (n - 1)) > Fraction(sum(x), n)


def read_csv_rows(path: Path, keys: list[str]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The CSV's rows keyed by (keys..., period); empty key cells are None."""
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    rows = {}
    for record in frame.to_dict("records"):
        key = tuple(record[k] or None for k in keys)
        if "h3_cell" in keys and key[-1] is None:
            key = (*key[:-1], ALL)
        period = date.fromisoformat(record["period"])
        number = [
            float(record[c]) if record[c] else np.nan for c in ("expected", "p_value", "z_score")
        ]
        rows[(*key, period)] = (int(record["count"]), *number, record["flagged"] == "true")
    return rows


def assert_rows_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (count, expected, p, z, flagged) in want.items():
        g = got[key]
        assert g[0] == count, key
        for a, b in zip(g[1:4], (expected, p, z), strict=True):
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-300), key
        assert g[4] == flagged, key


def assert_series_equal(path: Path, want: dict, keys: list[str]) -> None:
    table = pq.read_table(path).to_pydict()
    got: dict[tuple[Any, ...], dict[date, int]] = {}
    for i, period in enumerate(table["period"]):
        key = tuple(table[k][i] for k in keys)
        if "h3_cell" in keys and key[-1] is None:
            key = (*key[:-1], ALL)
        got.setdefault(key, {})[period] = table["count"][i]
    assert got.keys() == want.keys()
    for key, series in want.items():
        assert got[key] == {d.date(): int(n) for d, n in series.items()}, key


def planted(unit: str, seed: int = 3) -> pd.DataFrame:
    """calm (Poisson 20), burst (Poisson 12, then 40 and 45 in the recent periods), wild
    (negative binomial), rising (5, 15, 25, 35 at the end), None (Poisson 4)."""
    rng = np.random.default_rng(seed)
    n = 30
    counts: dict[Any, list[int]] = {
        "calm": rng.poisson(20, n).tolist(),
        "burst": [*rng.poisson(12, n - 2).tolist(), 40, 45],
        "wild": rng.negative_binomial(2, 2 / (2 + 15), n).tolist(),
        "rising": [*rng.poisson(5, n - 4).tolist(), 5, 15, 25, 35],
        None: rng.poisson(4, n).tolist(),
    }
    # Two days of a partial period after them (a day is never partial: none then).
    return events(rng, unit, counts, tail_days=0 if unit == "day" else 2)


def step_for(make_step: StepFactory, written: Written, df: pd.DataFrame, **overrides: Any):
    path, columns = written(to_table(df))
    return make_step(parquet_path=path, columns=columns, **overrides)


@pytest.mark.parametrize("unit", ["day", "week", "month"])
def test_groups_equal_pandas_and_scipy(make_step: StepFactory, written: Written, unit: str) -> None:
    df = planted(unit)
    params = {"timestamp_column": "at", "period": unit, "group_column": "grp"}
    result = count_anomalies.run(step_for(make_step, written, df), CountAnomaliesParams(**params))
    want = reference(df, params)

    series, csv_file, *plots = result.artifacts
    assert (series.name, csv_file.name) == ("count_series.parquet", "count_anomalies.csv")
    assert_rows_equal(read_csv_rows(csv_file.path, ["grp"]), want["rows"])
    assert_series_equal(series.path, want["series"], ["grp"])
    summary = result.summary
    significant = {k for k, (_, p) in want["trends"].items() if p < 0.05}
    flagged = [k for k, row in want["rows"].items() if row[4]]
    assert summary["series"] == len(want["series"]) == 5
    assert summary["anomalies"] == len(flagged)
    assert summary["significant_trends"] == len(significant)
    if unit == "day":  # a day is complete once the data reach it
        assert summary["partial_period_left_out"] is None and want["partial"] is None
        assert summary["events"] == len(df)
    else:
        assert summary["partial_period_left_out"]["events"] == want["partial"][1] == 15
        assert summary["partial_period_left_out"]["period"] == want["partial"][0].isoformat()
        assert summary["events"] == len(df) - 15
    # The planted structure is found.
    assert {k[0] for k in flagged} >= {"burst", "rising"}
    assert ("rising",) in significant and want["trends"][("rising",)][0] > 0
    detail = {d["grp"]: d for d in summary["series_detail"]}
    assert detail["rising"]["trend"]["slope"] == pytest.approx(want["trends"][("rising",)][0])
    assert detail["rising"]["trend"]["p_value"] == pytest.approx(want["trends"][("rising",)][1])
    assert summary["models"]["negative_binomial"] >= 1
    assert len(plots) == summary["significant_series"] == len(summary["plots"])
    assert all(p.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    # Series order: groups ascending, null last.
    assert list(pd.read_csv(csv_file.path, keep_default_na=False)["grp"].unique()) == [
        "burst", "calm", "rising", "wild", ""
    ]  # fmt: skip


def test_h3_cells_equal_row_wise_h3(make_step: StepFactory, written: Written) -> None:
    rng = np.random.default_rng(11)
    df = planted("week", seed=5)
    centres = np.array([[41.88, -87.63], [41.79, -87.60], [48.85, 2.35]])
    pick = rng.integers(0, len(centres), len(df))
    df["lat"] = centres[pick, 0] + rng.normal(0, 0.01, len(df))
    df["lon"] = centres[pick, 1] + rng.normal(0, 0.01, len(df))
    df.loc[df.index[:7], "lat"] = np.nan  # no position: only in the all-cells series
    df.loc[df.index[7:9], "lat"] = 95.0  # out of range: no cell
    # One cell of one group: an event a week, then a burst of 30 in the last complete week.
    weeks = [pd.Timestamp("2024-01-01 12:00") + pd.Timedelta(weeks=i) for i in range(29)]
    stamps = weeks + [pd.Timestamp("2024-07-22 10:00")] * 30  # week 29
    burst = pd.DataFrame({"at": stamps, "grp": "calm", "lat": 41.7, "lon": -87.7})
    df = pd.concat([df, burst], ignore_index=True)
    params = {
        "timestamp_column": "at",
        "group_column": "grp",
        "h3": {"lat_column": "lat", "lon_column": "lon", "resolution": 7},
        "max_plots": 3,
    }
    result = count_anomalies.run(step_for(make_step, written, df), CountAnomaliesParams(**params))
    want = reference(df, params)

    series, csv_file, *plots = result.artifacts
    keys = ["grp", "h3_cell"]
    assert_rows_equal(read_csv_rows(csv_file.path, keys), want["rows"])
    assert_series_equal(series.path, want["series"], keys)
    summary = result.summary
    assert summary["series"] == len(want["series"])
    in_all = sum(int(v.sum()) for k, v in want["series"].items() if k[1] == ALL)
    in_cells = sum(int(v.sum()) for k, v in want["series"].items() if k[1] != ALL)
    assert summary["events_without_cell"] == in_all - in_cells > 0
    assert len(plots) == 3 and summary["plots"] == [p.name for p in plots]
    cell = h3.latlng_to_cell(41.7, -87.7, 7)
    assert want["rows"][("calm", cell, date(2024, 7, 22))][4]  # flagged
    top = summary["series_detail"][0]
    assert (top["grp"], top["h3_cell"]) == ("calm", cell)
    assert top["flagged_periods"][0]["period"] == "2024-07-22"


@pytest.mark.parametrize("kind", ["date", "timestamptz"])
def test_date_and_zoned_timestamps_count_alike(
    make_step: StepFactory, written: Written, kind: str
) -> None:
    df = planted("week")
    plain = count_anomalies.run(
        step_for(make_step, written, df),
        CountAnomaliesParams(timestamp_column="at", group_column="grp"),
    )
    table = to_table(df)
    if kind == "date":
        at = table["at"].cast(pa.date32())
        df = df.assign(at=df["at"].dt.normalize())
    else:
        at = table["at"].cast(pa.timestamp("us", tz="UTC"))
    table = table.set_column(0, "at", at)
    path, columns = written(table)
    result = count_anomalies.run(
        make_step(parquet_path=path, columns=columns),
        CountAnomaliesParams(timestamp_column="at", group_column="grp"),
    )
    want = reference(df, {"timestamp_column": "at", "group_column": "grp"})
    assert_rows_equal(read_csv_rows(result.artifacts[1].path, ["grp"]), want["rows"])
    if kind == "timestamptz":
        assert result.summary == plain.summary


def test_one_series_recent_window_and_trend_threshold(
    make_step: StepFactory, written: Written
) -> None:
    df = planted("day")
    params = {
        "timestamp_column": "at",
        "period": "day",
        "recent_periods": 6,
        "min_events_for_trend": 10_000,  # no trend test
        "p_threshold": 0.2,
        "include_partial_period": True,
    }
    result = count_anomalies.run(step_for(make_step, written, df), CountAnomaliesParams(**params))
    want = reference(df, params)
    assert_rows_equal(read_csv_rows(result.artifacts[1].path, []), want["rows"])
    assert len(want["rows"]) == 6 and not want["trends"]
    assert result.summary["significant_trends"] == 0
    assert result.summary["partial_period_left_out"] is None
    assert len(result.summary["recent_periods"]) == 6


def test_nulls_in_the_timestamp_are_not_events(make_step: StepFactory, written: Written) -> None:
    df = planted("week")
    df.loc[df.index[::10], "at"] = pd.NaT
    params = {"timestamp_column": "at", "group_column": "grp"}
    result = count_anomalies.run(step_for(make_step, written, df), CountAnomaliesParams(**params))
    want = reference(df, params)
    assert_rows_equal(read_csv_rows(result.artifacts[1].path, ["grp"]), want["rows"])
    assert result.summary["null_timestamps"] == len(df.index[::10])


@pytest.mark.parametrize("rows", ["empty", "all null"])
def test_no_events_writes_empty_artifacts(
    make_step: StepFactory, written: Written, rows: str
) -> None:
    n = 0 if rows == "empty" else 5
    table = pa.table(
        {
            "at": pa.array([None] * n, type=pa.timestamp("us")),
            "grp": pa.array(["a"] * n, type=pa.string()),
            "lat": pa.array([1.0] * n, type=pa.float64()),
            "lon": pa.array([2.0] * n, type=pa.float64()),
        }
    )
    path, columns = written(table)
    params = CountAnomaliesParams(
        timestamp_column="at",
        group_column="grp",
        h3={"lat_column": "lat", "lon_column": "lon", "resolution": 5},
    )
    result = count_anomalies.run(make_step(parquet_path=path, columns=columns), params)
    s = result.summary
    assert (s["events"], s["series"], s["anomalies"], s["periods"]) == (0, 0, 0, 0)
    assert s["null_timestamps"] == n and s["recent_periods"] == [] and s["plots"] == []
    series, csv_file = result.artifacts
    assert pq.read_table(series.path).column_names == ["grp", "h3_cell", "period", "count"]
    assert pq.read_table(series.path).num_rows == 0
    assert csv_file.path.read_text().splitlines() == [
        "grp,h3_cell,period,count,expected,p_value,z_score,flagged"
    ]


def test_a_single_period_has_no_baseline(make_step: StepFactory, written: Written) -> None:
    rng = np.random.default_rng(0)
    df = events(rng, "week", {"a": [5], "b": [9]})
    params = {"timestamp_column": "at", "group_column": "grp"}
    result = count_anomalies.run(step_for(make_step, written, df), CountAnomaliesParams(**params))
    rows = read_csv_rows(result.artifacts[1].path, ["grp"])
    assert rows.keys() == {("a", date(2024, 1, 1)), ("b", date(2024, 1, 1))}
    for count, expected, p, z, flagged in rows.values():
        assert count in (5, 9) and np.isnan(expected) and np.isnan(p) and np.isnan(z)
        assert not flagged
    assert result.summary["models"] == {"poisson": 0, "negative_binomial": 0, "no_baseline": 2}


def test_sparse_and_late_series(make_step: StepFactory, written: Written) -> None:
    # b: one event, 14 silent weeks, then 3: a baseline of mean = variance = 1/12 (Poisson);
    # a: constant 4 (variance 0 < mean: Poisson); c: first seen in the recent window.
    rng = np.random.default_rng(0)
    b = [1] + [0] * 11 + [0, 0, 0, 3]
    df = events(rng, "week", {"a": [4] * 16, "b": b, "c": [0] * 15 + [2]})
    params = {"timestamp_column": "at", "group_column": "grp", "include_partial_period": True}
    result = count_anomalies.run(step_for(make_step, written, df), CountAnomaliesParams(**params))
    want = reference(df, params)
    got = read_csv_rows(result.artifacts[1].path, ["grp"])
    assert_rows_equal(got, want["rows"])
    last = date(2024, 4, 15)
    assert got[("b", last)][1:3] == (
        pytest.approx(1 / 12),
        pytest.approx(stats.poisson.sf(2, 1 / 12)),
    )
    assert got[("b", last)][4]  # flagged
    assert got[("a", last)][2] == pytest.approx(stats.poisson.sf(3, 4))
    assert all(np.isnan(row[1]) for key, row in got.items() if key[0] == "c")
    assert result.summary["models"] == {"poisson": 2, "negative_binomial": 0, "no_baseline": 1}


def test_csv_formula_escape_and_suffix(make_step: StepFactory, written: Written) -> None:
    rng = np.random.default_rng(0)
    df = events(rng, "week", {"=cmd|x": [3] * 6, "-5": [2] * 6})
    df = df.rename(columns={"grp": "@group"})
    path, columns = written(to_table(df))
    params = CountAnomaliesParams(
        timestamp_column="at", group_column="@group", csv_formula_escape=True
    )
    result = count_anomalies.run(
        make_step(parquet_path=path, columns=columns, artifact_suffix="-2"), params
    )
    assert [a.name for a in result.artifacts] == ["count_series-2.parquet", "count_anomalies-2.csv"]
    lines = result.artifacts[1].path.read_text().splitlines()
    assert lines[0].startswith('"\'@group",period,')
    assert lines[1].startswith('"\'-5",') and lines[-1].startswith('"\'=cmd|x",')
    # The Parquet copy of the series is data: never escaped.
    assert set(pq.read_table(result.artifacts[0].path)["@group"].to_pylist()) == {"=cmd|x", "-5"}


def test_cancel_at_every_progress_report(make_step: StepFactory, written: Written) -> None:
    df = planted("week")
    df["lat"], df["lon"] = 41.8, -87.6
    path, columns = written(to_table(df))
    params = CountAnomaliesParams(
        timestamp_column="at",
        group_column="grp",
        h3={"lat_column": "lat", "lon_column": "lon", "resolution": 8},
    )
    calls = CancelOnCall(0)
    count_anomalies.run(make_step(parquet_path=path, columns=columns, report=calls), params)
    assert calls.calls > 5
    for n in range(1, calls.calls + 1):
        with pytest.raises(JobCancelled):
            step = make_step(parquet_path=path, columns=columns, report=CancelOnCall(n))
            count_anomalies.run(step, params)


def test_progress_grows_to_one(make_step: StepFactory, written: Written) -> None:
    seen: list[float] = []
    step = step_for(make_step, written, planted("week"), report=lambda f, m: seen.append(f))
    count_anomalies.run(step, CountAnomaliesParams(timestamp_column="at", group_column="grp"))
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0


def test_chunks_of_series_give_the_same_result(
    make_step: StepFactory, written: Written, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = planted("week")
    path, columns = written(to_table(df))
    params = CountAnomaliesParams(timestamp_column="at", group_column="grp")
    whole = count_anomalies.run(make_step(parquet_path=path, columns=columns), params)
    monkeypatch.setattr(count_anomalies, "BYTES_PER_ROW", 10**9)  # one series per chunk
    chunked = count_anomalies.run(make_step(parquet_path=path, columns=columns), params)
    assert chunked.summary == whole.summary
    for a, b in zip(whole.artifacts[:2], chunked.artifacts[:2], strict=True):
        assert a.path.read_bytes() == b.path.read_bytes() or a.name.endswith(".parquet")
    assert pq.read_table(whole.artifacts[0].path) == pq.read_table(chunked.artifacts[0].path)


COLUMNS = [
    ("at", "timestamp"),
    ("day", "date"),
    ("grp", "string"),
    ("lat", "float"),
    ("lon", "integer"),
    ("label", "string"),
    ("period", "string"),
    ("tags", "string[]"),
]


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({}, "timestamp_column", "required"),
        ({"timestamp_column": "nope"}, "timestamp_column", "not in the dataset"),
        ({"timestamp_column": "label"}, "timestamp_column", "timestamp or date"),
        ({"timestamp_column": "at", "period": "hour"}, "period", "day"),
        ({"timestamp_column": "at", "group_column": "nope"}, "group_column", "not in"),
        ({"timestamp_column": "at", "group_column": "tags"}, "group_column", "scalar"),
        ({"timestamp_column": "at", "group_column": "period"}, "group_column", "output column"),
        ({"timestamp_column": "at", "recent_periods": 0}, "recent_periods", "greater"),
        ({"timestamp_column": "at", "p_threshold": 1}, "p_threshold", "less than"),
        ({"timestamp_column": "at", "max_plots": -1}, "max_plots", "greater"),
        ({"timestamp_column": "at", "h3": {"lat_column": "lat"}}, "h3.lon_column", "required"),
        (
            {
                "timestamp_column": "at",
                "h3": {"lat_column": "lat", "lon_column": "lon", "resolution": 16},
            },
            "h3.resolution",
            "less than",
        ),
        (
            {
                "timestamp_column": "at",
                "h3": {"lat_column": "label", "lon_column": "lon", "resolution": 8},
            },
            "h3.lat_column",
            "numeric",
        ),
        ({"timestamp_column": "at", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    from schemas.domain.records import ColumnInfo

    columns = [ColumnInfo(name=n, type=t, null_count=0) for n, t in COLUMNS]
    with pytest.raises(ParamsError) as error:
        registry.validate_step("count_anomalies", params, columns)
    assert error.value.field == field
    assert text in error.value.message


def test_valid_params_and_schema() -> None:
    from schemas.domain.records import ColumnInfo

    columns = [ColumnInfo(name=n, type=t, null_count=0) for n, t in COLUMNS]
    params = {
        "timestamp_column": "day",
        "group_column": "grp",
        "h3": {"lat_column": "lat", "lon_column": "lon", "resolution": 8},
    }
    model = registry.validate_step("count_anomalies", params, columns)
    assert isinstance(model, CountAnomaliesParams) and model.period == "week"
    schema = registry.PROCESSORS["count_anomalies"].params_model.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["period"]["enum"] == ["day", "week", "month"]


def test_periods_are_labelled_like_pandas() -> None:
    from services.processing.processors.events.common import last_day, period_label

    assert period_label("week", 0) == date(1970, 1, 5)
    assert period_label("month", 2024 * 12 + 1) == date(2024, 2, 1)
    assert last_day("month", 2024 * 12 + 1) == date(2024, 2, 29)
    assert last_day("week", 0) == date(1970, 1, 11)
    monday = date(2024, 7, 22)
    index = (monday - date(1970, 1, 5)) // timedelta(weeks=1)
    assert period_label("week", index) == monday
