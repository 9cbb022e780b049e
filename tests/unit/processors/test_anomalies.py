"""anomalies equals an independent pandas/scipy computation, flagged set included."""

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from schemas.domain.records import ColumnInfo
from services.processing.processors.base import JobCancelled
from services.processing.processors.numeric import ProfileCache
from services.processing.processors.tables import aggregates, anomalies
from services.processing.processors.tables import profiles as profiles_module
from tests.unit.processors.conftest import CancelOnCall, StepFactory

NUMERIC = ["normal", "ties", "constant", "mostly_zero", "count", "big_int"]


def expected(df: pd.DataFrame, method: str, k: float) -> tuple[dict[str, Any], list[tuple]]:
    """Per-column parameters and the flagged (row_number, column, value, score) rows."""
    params: dict[str, Any] = {}
    flagged: list[tuple[int, int, str, float, float]] = []
    for position, name in enumerate(NUMERIC):
        s = df[name].astype(float)
        p: dict[str, Any] = {"non_null": int(s.notna().sum())}
        if method == "zscore":
            score = pd.Series(stats.zscore(s, nan_policy="omit"), index=s.index)
            p.update(mean=s.mean(), std=s.std(ddof=0))
            zero_scale = p["std"] == 0
        elif method == "modified_zscore":
            median = s.median()
            deviation = (s - median).abs()
            p.update(median=median, mad=deviation.median())
            if p["mad"] != 0:
                score = 0.6745 * (s - median) / p["mad"]
            else:
                p["meanad"] = deviation.mean()
                score = (s - median) / (1.253314 * p["meanad"])
            zero_scale = p["mad"] == 0 and p["meanad"] == 0
        else:
            q1, q3 = s.quantile(0.25), s.quantile(0.75)
            iqr = q3 - q1
            lower, upper = q1 - k * iqr, q3 + k * iqr
            p.update(q1=q1, q3=q3, iqr=iqr, lower=lower, upper=upper)
            zero_scale = s.nunique() <= 1  # IQR = 0 alone still flags: the fences are q1 = q3
            score = pd.Series(np.nan, index=s.index)
            with np.errstate(divide="ignore"):
                score[s < lower] = (s[s < lower] - lower) / iqr
                score[s > upper] = (s[s > upper] - upper) / iqr
        mask = (
            pd.Series(False, index=s.index)
            if zero_scale
            else (score.abs() > k if method != "iqr" else score.notna())
        )
        p["count"] = int(mask.sum())
        params[name] = p
        for row in np.flatnonzero(mask.to_numpy()).tolist():
            flagged.append((row + 1, position, name, float(s.iloc[row]), float(score.iloc[row])))
    flagged.sort(key=lambda item: (item[0], item[1]))
    return params, [(r, n, v, sc) for r, _, n, v, sc in flagged]


HEADER = ["row_number", "line", "column", "value", "score"]


def read_artifact(path: Path) -> list[tuple[int, str, float, float]]:
    """The flagged (row_number, column, value, score) rows; `line` is empty without lines."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == HEADER
        rows = list(reader)
    assert all(line == "" for _, line, _, _, _ in rows)
    return [(int(r), c, float(v), float(s)) for r, _, c, v, s in rows]


@pytest.mark.parametrize(
    ("method", "threshold"),
    [("zscore", None), ("zscore", 2.0), ("modified_zscore", None), ("iqr", None), ("iqr", 3.0)],
)
def test_equals_pandas(
    make_step: StepFactory,
    dataset: tuple[Path, list[ColumnInfo]],
    method: str,
    threshold: float | None,
    data_size: str,
) -> None:
    df = pd.read_parquet(dataset[0])
    k = threshold if threshold is not None else anomalies.DEFAULT_THRESHOLDS[method]
    want_params, want_rows = expected(df, method, k)
    params = anomalies.AnomaliesParams(method=method, threshold=threshold)
    result = anomalies.run(make_step(), params)

    summary = result.summary
    assert summary["method"] == method and summary["threshold"] == k
    assert list(summary["columns"]) == NUMERIC  # default: every numeric column
    assert summary["total"] == len(want_rows) > 0
    for name, want in want_params.items():
        got = summary["columns"][name]
        assert got["count"] == want["count"], name
        assert got["non_null"] == want["non_null"], name
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)

    [artifact] = result.artifacts
    assert artifact.name == "anomalies.csv" and artifact.content_type == "text/csv"
    got_rows = read_artifact(artifact.path)
    assert [(r, c, v) for r, c, v, _ in got_rows] == [(r, c, v) for r, c, v, _ in want_rows]
    for got, want in zip(got_rows, want_rows, strict=True):
        assert got[3] == pytest.approx(want[3], rel=1e-9)


def test_special_columns(make_step: StepFactory) -> None:
    summary = anomalies.run(
        make_step(), anomalies.AnomaliesParams(method="modified_zscore")
    ).summary
    columns = summary["columns"]
    # MAD = 0 (80% zeros): the MeanAD fallback is used and reported.
    assert columns["mostly_zero"]["mad"] == 0 and columns["mostly_zero"]["meanad"] > 0
    assert columns["mostly_zero"]["count"] > 0
    assert "meanad" not in columns["normal"]
    # A constant column has no scale: nothing flagged, and the summary says why.
    assert columns["constant"]["count"] == 0 and "note" in columns["constant"]
    assert "MAD is 0" in columns["mostly_zero"]["note"]
    iqr = anomalies.run(make_step(), anomalies.AnomaliesParams(method="iqr")).summary["columns"]
    # IQR = 0 (80% zeros): the fences collapse to 0 and every non-zero value is flagged.
    assert iqr["mostly_zero"]["iqr"] == 0 and iqr["mostly_zero"]["count"] > 0
    assert "IQR is 0" in iqr["mostly_zero"]["note"] and "constant" not in iqr["mostly_zero"]["note"]
    assert "constant" in iqr["constant"]["note"] and iqr["constant"]["count"] == 0


def test_selected_columns_suffix_and_integer_values(make_step: StepFactory) -> None:
    params = anomalies.AnomaliesParams(method="iqr", columns=["big_int", "count"], threshold=0.1)
    result = anomalies.run(make_step(artifact_suffix="-2"), params)
    assert list(result.summary["columns"]) == ["big_int", "count"]
    [artifact] = result.artifacts
    assert artifact.name == "anomalies-2.csv" and artifact.path.name == "anomalies-2.csv"
    text = artifact.path.read_text().splitlines()
    assert len(text) == result.summary["total"] + 1
    # Integer values are written as stored (no ".0"); columns keep the requested order.
    rows = [line.split(",") for line in text[1:]]
    assert all("." not in value for _, _, _, value, _ in rows)
    by_row: dict[str, list[str]] = {}
    for row, _, column, _, _ in rows:
        by_row.setdefault(row, []).append(column)
    assert all(cols == sorted(cols, key=["big_int", "count"].index) for cols in by_row.values())


def test_small_memory_budget_batches_columns(
    make_step: StepFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = anomalies.AnomaliesParams(method="modified_zscore")
    whole = anomalies.run(make_step(), params).summary
    queries: list[str] = []
    real = aggregates.run_with_progress

    def spy(con: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        queries.append(sql)
        return real(con, sql, *args, **kwargs)

    # Room for one column's quantile state (of the MAD) at a time (3000 rows * 16 bytes * 2).
    monkeypatch.setattr(aggregates, "parse_size", lambda text: 100_000)
    monkeypatch.setattr(aggregates, "run_with_progress", spy)
    assert anomalies.run(make_step(), params).summary == whole
    assert sum("quantile_cont" in sql for sql in queries) == len(NUMERIC)


def test_nothing_flagged_writes_a_header_only(make_step: StepFactory) -> None:
    params = anomalies.AnomaliesParams(method="zscore", columns=["constant"])
    result = anomalies.run(make_step(), params)
    assert result.summary["total"] == 0
    assert result.artifacts[0].path.read_text().strip() == ",".join(HEADER)


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_cancel(make_step: StepFactory, fail_on_call: int) -> None:
    report = CancelOnCall(fail_on_call)

    with pytest.raises(JobCancelled):
        anomalies.run(make_step(report=report), anomalies.AnomaliesParams(method="iqr"))


def test_steps_of_a_job_share_column_profiles(
    make_step: StepFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = {
        method: anomalies.run(make_step(), anomalies.AnomaliesParams(method=method)).summary
        for method in ("zscore", "iqr")
    }
    monkeypatch.setattr(profiles_module, "SMALL_VALUES", 0)  # a fetch task per column
    profiles = ProfileCache()
    first = anomalies.run(make_step(profiles=profiles), anomalies.AnomaliesParams(method="zscore"))
    assert first.summary == alone["zscore"]
    assert all(profiles.get(name) is not None for name in NUMERIC)

    fetched: list[str] = []
    original = profiles_module.fetch_task

    def counting(*args: Any) -> Any:
        fetched.append(args[1].name)
        return original(*args)

    monkeypatch.setattr(profiles_module, "fetch_task", counting)
    second = anomalies.run(make_step(profiles=profiles), anomalies.AnomaliesParams(method="iqr"))
    assert second.summary == alone["iqr"]
    assert fetched == []  # every column came from the first step's profiles


def _flag_sources(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per column with extremes, whether its flags were taken from them."""
    outcomes: list[bool] = []
    real = anomalies._holds_every_flag

    def spy(*args: Any) -> bool:
        outcomes.append(real(*args))
        return outcomes[-1]

    monkeypatch.setattr(anomalies, "_holds_every_flag", spy)
    return outcomes


@pytest.mark.parametrize("method", ["zscore", "modified_zscore", "iqr"])
@pytest.mark.parametrize("extremes", ["enough", "too few"])
def test_flags_from_the_profiled_extremes_equal_a_full_scan(
    make_step: StepFactory,
    dataset: tuple[Path, list[ColumnInfo]],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    extremes: str,
) -> None:
    from services.processing.processors import numeric

    monkeypatch.setattr(profiles_module, "SMALL_VALUES", 0)  # profiles keep the extremes
    if extremes == "too few":  # only min and max kept: the rule flags one, so columns are scanned
        monkeypatch.setattr(numeric, "EXTREME_MIN", 1)
        monkeypatch.setattr(numeric, "EXTREME_MAX", 1)
    outcomes = _flag_sources(monkeypatch)
    k = anomalies.DEFAULT_THRESHOLDS[method]
    _, want_rows = expected(pd.read_parquet(dataset[0]), method, k)
    result = anomalies.run(make_step(), anomalies.AnomaliesParams(method=method))

    got_rows = read_artifact(result.artifacts[0].path)
    assert [(r, c, v) for r, c, v, _ in got_rows] == [(r, c, v) for r, c, v, _ in want_rows]
    assert outcomes  # every numeric column here is DOUBLE or BIGINT
    if extremes == "enough":
        assert all(outcomes)
    else:
        assert not all(outcomes)
