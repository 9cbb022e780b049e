"""Infinite, huge and tiny values, degenerate histograms, IQR and MAD of 0.

Each result is compared with the reference computation (scipy, numpy, pandas, sklearn) where
that is sane, and otherwise with the documented rule: the reference on the values rescaled by
a power of two (exact), or the histogram's stated properties.
"""

import csv
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from services.processing.processors.base import StepOutput
from services.processing.processors.tables import anomalies, metrics, normalize
from tests.unit.processors.conftest import StepFactory, columns_of, write_parquet

ROWS = 3000
TINY = 5e-324  # the smallest denormal


def dataset(make_step: StepFactory, tmp_path: Path, table: pa.Table, **step: Any) -> Any:
    """A StepInput for the table written as a typed copy."""
    path = write_parquet(table, tmp_path / f"data{len(list(tmp_path.iterdir()))}.parquet")
    return make_step(parquet_path=path, columns=columns_of(table), **step)


def flagged(result: StepOutput) -> list[tuple[int, str, float]]:
    """(row_number, column, score) of anomalies.csv."""
    with result.artifacts[0].path.open(newline="") as f:
        return [(int(r["row_number"]), r["column"], float(r["score"])) for r in csv.DictReader(f)]


def reference_flags(
    frame: pd.DataFrame, scores: dict[str, np.ndarray], threshold: float
) -> list[tuple[int, str, float]]:
    """What `anomalies` writes for these scores: |score| > threshold, by row then column."""
    out = []
    for row in range(len(frame)):
        for name in frame.columns:
            score = scores[name][row]
            if not np.isnan(score) and abs(score) > threshold:
                out.append((row + 1, name, float(score)))
    return out


def assert_flags(got: list[tuple[int, str, float]], want: list[tuple[int, str, float]]) -> None:
    assert [(r, c) for r, c, _ in got] == [(r, c) for r, c, _ in want]
    for (_, _, g), (_, _, w) in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-9)


# --- zscore with an infinite value (scipy: every score NaN) -----------------------------


@pytest.mark.parametrize("infinities", [[math.inf], [math.inf, -math.inf]], ids=["inf", "both"])
def test_zscore_flags_nothing_in_a_column_with_inf_as_scipy(
    make_step: StepFactory, tmp_path: Path, infinities: list[float], data_size: str
) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, ROWS)
    x[[10, 20]] = [40.0, -40.0]  # outliers that a finite column would flag
    x[[30 + i for i in range(len(infinities))]] = infinities
    y = rng.normal(5.0, 2.0, ROWS)
    y[7] = 90.0
    frame = pd.DataFrame({"x": x, "y": y})
    with np.errstate(all="ignore"):  # inf - inf: scipy's NaN scores
        scores = {n: stats.zscore(frame[n].to_numpy(), nan_policy="omit") for n in frame.columns}
    assert np.isnan(scores["x"]).all()  # the reference: no finite score at all
    want = reference_flags(frame, scores, 3.0)

    step = dataset(make_step, tmp_path, pa.table({"x": x, "y": y}))
    result = anomalies.run(step, anomalies.AnomaliesParams(method="zscore"))

    assert_flags(flagged(result), want)
    column = result.summary["columns"]["x"]
    assert column["count"] == 0 and "infinite" in column["note"]
    assert (
        result.summary["columns"]["y"]["count"] == len(want) > 0
        and "note" not in result.summary["columns"]["y"]
    )


@pytest.mark.parametrize("method", ["modified_zscore", "iqr"])
def test_robust_rules_flag_an_infinite_value_as_pandas(
    make_step: StepFactory, tmp_path: Path, method: str
) -> None:
    x = pd.Series([1.0, 2.0, 3.0, math.inf, 4.0, 2.5, 3.5, -math.inf, 2.0])
    median = x.median()
    if method == "modified_zscore":
        mad = (x - median).abs().median()
        score = 0.6745 * (x - median) / mad
        mask = score.abs() > 3.5
    else:
        q1, q3 = x.quantile(0.25), x.quantile(0.75)
        lower, upper = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        score = pd.Series(np.where(x < lower, x - lower, x - upper) / (q3 - q1))
        mask = (x < lower) | (x > upper)
    want = [(i + 1, "x", float(score[i])) for i in np.flatnonzero(mask).tolist()]
    assert [w[2] for w in want] == [math.inf, -math.inf]

    step = dataset(make_step, tmp_path, pa.table({"x": x.to_numpy()}))
    result = anomalies.run(step, anomalies.AnomaliesParams(method=method))
    assert flagged(result) == want
    assert "note" not in result.summary["columns"]["x"]


def test_rules_whose_centre_is_not_finite_flag_nothing(
    make_step: StepFactory, tmp_path: Path
) -> None:
    x = np.array([1.0, math.inf, math.inf, math.inf, 2.0])  # median and q3 are inf
    step = dataset(make_step, tmp_path, pa.table({"x": x}))
    for method in ("modified_zscore", "iqr"):
        result = anomalies.run(step, anomalies.AnomaliesParams(method=method))
        assert result.summary["total"] == 0, method
        assert "not finite" in result.summary["columns"]["x"]["note"], method


# --- values near the ends of the double range --------------------------------------------


def hostile_columns() -> tuple[pa.Table, dict[str, int]]:
    """Columns whose sums overflow or squares underflow, and the power of two that brings
    each one to ordinary magnitudes (the reference computes on the values times 2^k)."""
    rng = np.random.default_rng(4)
    big = rng.normal(3.0, 1.0, ROWS) * 1e300
    big[[5, 9]] = [2e302, -1.5e302]
    denormal = rng.integers(1, 200, ROWS) * TINY
    denormal[[3, 4]] = [4000 * TINY, 3000 * TINY]
    wide = rng.uniform(-1.0, 1.0, ROWS) * 1.7e308  # max - min overflows
    squares = rng.normal(0.0, 1.0, ROWS) * 1e160  # the squares overflow, the sum does not
    squares[11] = 9e160
    table = pa.table({"big": big, "denormal": denormal, "wide": wide, "squares": squares})
    # 2^-600 keeps the squares of `wide` in range too (numpy's std squares the deviations).
    return table, {"big": -1000, "denormal": 1074, "wide": -600, "squares": -530}


def tolerance(name: str) -> float:
    """A mean or std of denormals has only the few bits a denormal holds: its nearest one."""
    return 0.02 if name == "denormal" else 1e-9


def rescaled(values: np.ndarray, power: int) -> np.ndarray:
    """values * 2^power, exactly (np.ldexp: no overflowing intermediate power of two)."""
    return np.asarray(np.ldexp(values, power))


def test_zscore_stays_finite_where_the_true_scores_are(
    make_step: StepFactory, tmp_path: Path, data_size: str
) -> None:
    table, powers = hostile_columns()
    frame = table.to_pandas()
    # scipy overflows (every z 0) or divides by a zero std on the values as they are ...
    with np.errstate(all="ignore"):
        assert not np.isfinite(frame["big"].to_numpy().std())
        assert frame["denormal"].to_numpy().std() == 0.0
    # ... and is exact on the values times 2^k: z-scores do not change with the scale.
    scores = {n: stats.zscore(rescaled(frame[n].to_numpy(), powers[n])) for n in frame.columns}
    want = reference_flags(frame, scores, 3.0)
    assert {c for _, c, _ in want} == {"big", "denormal", "squares"}

    result = anomalies.run(
        dataset(make_step, tmp_path, table), anomalies.AnomaliesParams(method="zscore")
    )
    assert_flags(flagged(result), want)
    for name in frame.columns:
        column = result.summary["columns"][name]
        values = rescaled(frame[name].to_numpy(), powers[name])
        want_mean = math.ldexp(values.mean(), -powers[name])
        assert column["mean"] == pytest.approx(want_mean, rel=tolerance(name)), name
        want_std = math.ldexp(values.std(), -powers[name])
        assert column["std"] == pytest.approx(want_std, rel=tolerance(name)), name


@pytest.mark.parametrize("method", ["modified_zscore", "iqr"])
def test_robust_rules_stay_finite_where_the_true_scores_are(
    make_step: StepFactory, tmp_path: Path, method: str
) -> None:
    table, powers = hostile_columns()
    frame = table.to_pandas()
    scores: dict[str, np.ndarray] = {}
    for name in frame.columns:
        s = pd.Series(rescaled(frame[name].to_numpy(), powers[name]))
        if method == "modified_zscore":
            scores[name] = (0.6745 * (s - s.median()) / (s - s.median()).abs().median()).to_numpy()
        else:
            q1, q3 = s.quantile(0.25), s.quantile(0.75)
            lower, upper = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
            below, above = s - lower, s - upper
            score = np.where(s < lower, below, np.where(s > upper, above, 0.0)) / (q3 - q1)
            scores[name] = np.where((s < lower) | (s > upper), score, np.nan)
    threshold = 3.5 if method == "modified_zscore" else 0.0
    want = reference_flags(frame, scores, threshold)
    result = anomalies.run(
        dataset(make_step, tmp_path, table), anomalies.AnomaliesParams(method=method)
    )
    assert_flags(flagged(result), want)


def test_a_constant_column_of_denormals_is_constant(make_step: StepFactory, tmp_path: Path) -> None:
    step = dataset(make_step, tmp_path, pa.table({"x": np.full(50, TINY)}))
    for method in ("zscore", "modified_zscore", "iqr"):
        result = anomalies.run(step, anomalies.AnomaliesParams(method=method))
        assert result.summary["total"] == 0
        assert "constant" in result.summary["columns"]["x"]["note"], method
    out = normalize.run(
        step,
        normalize.NormalizeParams.model_validate(
            {"scale": {"method": "zscore"}, "output_format": "parquet"}
        ),
    )
    assert pq.read_table(out.artifacts[0].path)["x"].to_pylist() == [0.0] * 50


SCALERS = {"minmax": MinMaxScaler, "zscore": StandardScaler, "robust": RobustScaler}


@pytest.mark.parametrize("dedupe", [False, True], ids=["from-profiles", "from-duckdb"])
@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
def test_normalize_scales_stay_finite_where_the_true_ones_are(
    make_step: StepFactory, tmp_path: Path, method: str, dedupe: bool, data_size: str
) -> None:
    table, powers = hostile_columns()
    frame = table.to_pandas()
    # Scaling is invariant under a power-of-two rescaling: sklearn on the exact rescaled values.
    want = {
        n: SCALERS[method]().fit_transform(rescaled(frame[[n]].to_numpy(), powers[n]))[:, 0]
        for n in frame.columns
    }
    params = {"scale": {"method": method}, "output_format": "parquet", "drop_duplicates": dedupe}
    result = normalize.run(
        dataset(make_step, tmp_path, table), normalize.NormalizeParams.model_validate(params)
    )
    got = pq.read_table(result.artifacts[0].path).to_pandas()
    for name in frame.columns:
        assert np.isfinite(got[name]).all(), name
        assert got[name].to_numpy() == pytest.approx(want[name], rel=1e-9, abs=1e-12), name
        assert "note" not in result.summary["scaled"][name]


@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
def test_normalize_of_a_column_with_inf(
    make_step: StepFactory, tmp_path: Path, method: str
) -> None:
    x = np.array([1.0, 2.0, 3.0, math.inf, 4.0, 2.0, 3.0])
    step = dataset(make_step, tmp_path, pa.table({"x": x}))
    params = {"scale": {"method": method}, "output_format": "parquet"}
    result = normalize.run(step, normalize.NormalizeParams.model_validate(params))
    got = pq.read_table(result.artifacts[0].path)["x"].to_numpy()
    scaled = result.summary["scaled"]["x"]
    if method == "robust":  # the quartiles are finite: scaled, the infinite value stays so
        q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
        assert got.tolist() == ((x - median) / (q3 - q1)).tolist()
        assert "note" not in scaled
    else:  # no finite min/max or mean/std: written as it is, and the summary says why
        assert got.tolist() == x.tolist()
        assert "not scaled" in scaled["note"] and "infinite" in scaled["note"]


# --- histograms ---------------------------------------------------------------------------


def histogram_columns() -> pa.Table:
    """Degenerate ranges for 10 bins, and sane ones."""
    rows = 40
    rng = np.random.default_rng(2)

    def spread(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array([values[i % len(values)] for i in range(rows)], type=kind)

    i64max = np.iinfo(np.int64).max
    return pa.table(
        {
            "near_2_53": spread([2.0**53 + 2 * k for k in range(6)], pa.float64()),
            "int64_max": spread([i64max], pa.int64()),
            "near_int64_max": spread([i64max - k for k in (0, 1, 7, 300, 5000)], pa.int64()),
            "ints_past_2_53": spread([2**62 + k for k in (0, 1, 2, 3, 1001)], pa.int64()),
            "plus_minus_1e308": spread([-1e308, 0.0, 1e308, -1.7e308, 1.79e308], pa.float64()),
            "denormals": spread([k * TINY for k in (1, 2, 3, 5)], pa.float64()),
            "one_huge_float": spread([2.0**60], pa.float64()),
            "one_value": spread([7.25], pa.float64()),
            "normal": pa.array(rng.normal(0.0, 1.0, rows)),
            "integers": spread(list(range(-3, 1000, 7)), pa.int64()),
        }
    )


def expected_counts(values: list[Any], edges: list[float]) -> list[int]:
    """Counts by exact comparison (Python compares int with float exactly): [e_i, e_i+1)."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[sum(1 for e in edges[1:-1] if e <= v)] += 1
    return counts


def numpy_histogram(values: list[Any]) -> tuple[list[int], list[float]] | None:
    """numpy.histogram(values, bins=10) where it is sane: it succeeds, on values a double
    holds exactly, with edges that hold them."""
    if any(isinstance(v, int) and float(v) != v for v in values):
        return None
    try:
        with np.errstate(all="ignore"):  # numpy's linspace overflows on the way to failing
            counts, edges = np.histogram(np.array(values, dtype=float), bins=10)
    except ValueError:  # "Too many bins for data range"
        return None
    return counts.tolist(), edges.tolist()


def test_histograms_are_sane_at_the_edges_of_the_range(
    make_step: StepFactory, tmp_path: Path, data_size: str
) -> None:
    table = histogram_columns()
    summary = metrics.run(dataset(make_step, tmp_path, table), metrics.MetricsParams()).summary
    sane = set()
    for name in table.column_names:
        values = table[name].to_pylist()
        histogram = summary["columns"][name]["histogram"]
        edges, counts = histogram["edges"], histogram["counts"]
        reference = numpy_histogram(values)
        if reference is not None:
            sane.add(name)
            assert counts == reference[0], name
            assert edges == pytest.approx(reference[1], rel=1e-12), name
        # The rule: finite, strictly increasing edges holding every value, at most 10 bins,
        # counts adding up to the non-null count and counting [e_i, e_i+1) exactly.
        assert all(math.isfinite(e) for e in edges), name
        assert all(a < b for a, b in itertools.pairwise(edges)), name
        assert 2 <= len(edges) <= 11, name
        assert edges[0] <= min(values) and edges[-1] >= max(values), name
        assert sum(counts) == len(values), name
        assert counts == expected_counts(values, edges), name
        if len(edges) < 11:  # fewer bins only when one more would repeat an edge
            first, last = edges[0], edges[-1]
            if math.isfinite(last - first):
                more = np.linspace(first, last, len(edges) + 1)
            else:
                more = np.linspace(first / 2, last / 2, len(edges) + 1) * 2
            assert not (np.diff(more) > 0).all(), name
    assert sane == {"normal", "integers", "one_value"}  # numpy refuses every other column
    assert len(summary["columns"]["int64_max"]["histogram"]["counts"]) < 10
    assert len(summary["columns"]["plus_minus_1e308"]["histogram"]["counts"]) == 10


def test_histogram_and_moments_of_a_column_with_inf_are_null(
    make_step: StepFactory, tmp_path: Path, data_size: str
) -> None:
    table = pa.table({"x": [1.0, 2.0, math.inf, 4.0], "y": [1.0, -math.inf, math.inf, 0.0]})
    summary = metrics.run(dataset(make_step, tmp_path, table), metrics.MetricsParams()).summary
    for name in ("x", "y"):
        column = summary["columns"][name]
        assert column["histogram"] is None and column["mean"] is None and column["std"] is None
    assert summary["columns"]["x"]["min"] == 1.0 and summary["columns"]["x"]["p50"] == 3.0


def test_metrics_moments_stay_finite_where_the_true_ones_are(
    make_step: StepFactory, tmp_path: Path, data_size: str
) -> None:
    table, powers = hostile_columns()
    summary = metrics.run(dataset(make_step, tmp_path, table), metrics.MetricsParams()).summary
    for name in table.column_names:
        values = rescaled(table[name].to_numpy(), powers[name])
        column = summary["columns"][name]
        want_mean = math.ldexp(values.mean(), -powers[name])
        assert column["mean"] == pytest.approx(want_mean, rel=tolerance(name)), name
        want_std = math.ldexp(values.std(ddof=1), -powers[name])
        assert column["std"] == pytest.approx(want_std, rel=tolerance(name)), name


# --- IQR = 0 and MAD = 0 --------------------------------------------------------------


def test_iqr_of_zero_flags_every_value_off_the_quartile_as_pandas(
    make_step: StepFactory, tmp_path: Path
) -> None:
    x = pd.Series([0.0] * 12 + [0.5, -2.0, 3.0] + [0.0] * 5)
    q1, q3 = x.quantile(0.25), x.quantile(0.75)
    iqr = q3 - q1
    lower, upper = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    outside = (x < lower) | (x > upper)
    with np.errstate(all="ignore"):  # the textbook scores divide by an IQR of 0
        score = np.where(x < lower, x - lower, x - upper) / iqr
    want = [(i + 1, "x", float(score[i])) for i in np.flatnonzero(outside).tolist()]
    assert iqr == 0 and [w[2] for w in want] == [math.inf, -math.inf, math.inf]

    table = pa.table({"x": x.to_numpy(), "same": np.full(len(x), 4.0)})
    result = anomalies.run(
        dataset(make_step, tmp_path, table), anomalies.AnomaliesParams(method="iqr")
    )
    assert flagged(result) == want
    column = result.summary["columns"]["x"]
    assert (column["iqr"], column["lower"], column["upper"], column["count"]) == (0.0, 0.0, 0.0, 3)
    assert column["note"].startswith("IQR is 0")
    assert "constant column" in result.summary["columns"]["same"]["note"]
    assert "inf" in result.artifacts[0].path.read_text()  # pandas reads it back as inf


def test_mad_of_zero_keeps_the_mean_absolute_deviation_fallback(
    make_step: StepFactory, tmp_path: Path
) -> None:
    x = pd.Series([5.0] * 12 + [6.0, 4.0, 40.0])
    median = x.median()
    meanad = (x - median).abs().mean()
    score = (x - median) / (1.253314 * meanad)
    want = [(i + 1, "x", float(score[i])) for i in np.flatnonzero(score.abs() > 3.5).tolist()]
    result = anomalies.run(
        dataset(make_step, tmp_path, pa.table({"x": x.to_numpy()})),
        anomalies.AnomaliesParams(method="modified_zscore"),
    )
    assert_flags(flagged(result), want)
    column = result.summary["columns"]["x"]
    assert column["mad"] == 0 and column["meanad"] == pytest.approx(meanad, rel=1e-12)
    assert column["note"].startswith("MAD is 0")
