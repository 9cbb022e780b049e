"""count_model equals statsmodels fitted directly on a design matrix built with pandas from
the same events (counts by resample, indicators by hand): the same numbers to 1e-6."""

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.discrete.discrete_model import NegativeBinomial
from statsmodels.genmod import families
from statsmodels.genmod.generalized_linear_model import GLM

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError, ProcessorInputError
from services.processing.processors.events import count_model
from services.processing.processors.events.count_model import CountModelParams
from tests.unit.processors.conftest import CancelOnCall, StepFactory
from tests.unit.processors.events.conftest import START, Written, events, to_table

RULES = {"hour": "h", "day": "D", "week": "W-MON"}
STEP = {"hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1), "week": pd.Timedelta(weeks=1)}
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
RTOL = 1e-6


def counts_frame(df: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.Timestamp]:
    """observed per (group, period), each group from its first event to the last period."""
    unit, group = params.get("period", "day"), params.get("group_column")
    ev = df[df["at"].notna()]
    resample = ev.set_index("at").sort_index().resample(RULES[unit], closed="left", label="left")
    total = resample.size()
    first, last = total.index.min(), total.index.max()
    if len(total) > 1 and not params.get("include_partial_period", False):
        if unit == "hour":
            partial = ev["at"].max() < last + pd.Timedelta(minutes=59)
        else:
            partial = ev["at"].max().normalize() < last + STEP[unit] - pd.Timedelta(days=1)
        if partial:
            last -= STEP[unit]
    parts = []
    groups = [(None, ev)] if group is None else list(ev.groupby(group, dropna=False))
    order = sorted((g for g, _ in groups if not pd.isna(g)), key=str)
    order += [g for g, _ in groups if pd.isna(g)]
    for value, frame in sorted(groups, key=lambda item: order.index(item[0])):
        counts = frame.set_index("at").resample(RULES[unit], closed="left", label="left").size()
        counts = counts[counts.index <= last]
        index = pd.date_range(counts.index.min(), last, freq=RULES[unit])
        counts = counts.reindex(index, fill_value=0)
        parts.append(
            pd.DataFrame({"group": value, "period": counts.index, "observed": counts.to_numpy()})
        )
    return pd.concat(parts, ignore_index=True), first


def design_frame(rows: pd.DataFrame, first: pd.Timestamp, params: dict[str, Any]) -> pd.DataFrame:
    """const, the features' columns (first level present the reference), group indicators."""
    unit, period = params.get("period", "day"), rows["period"]
    x = pd.DataFrame({"const": 1.0}, index=rows.index)

    def indicators(prefix: str, values: pd.Series, labels: list[str], offset: int) -> None:
        for level in sorted(values.unique())[1:]:
            x[f"{prefix}[{labels[level - offset]}]"] = (values == level).astype(float)

    for feature in params["features"]:
        if feature == "day_of_week":
            indicators(feature, period.dt.day_of_week, DAYS, 0)
        elif feature == "is_weekend":
            x[feature] = (period.dt.day_of_week >= 5).astype(float)
        elif feature == "month":
            indicators(feature, period.dt.month, MONTHS, 1)
        elif feature == "hour":
            indicators(feature, period.dt.hour, [str(h) for h in range(24)], 0)
        elif feature == "trend":
            x[feature] = ((period - first) / STEP[unit]).astype(float)
    group = params.get("group_column")
    if group is not None:
        levels = list(dict.fromkeys(rows["group"]))  # in series order
        for i, level in enumerate(levels[1:], start=1):
            name = "null" if level is None or pd.isna(level) else str(level)
            x[f"{group}[{name}]"] = (rows["group"].map(levels.index) == i).astype(float)
    constant = [c for c in x.columns[1:] if x[c].nunique() == 1]
    return x.drop(columns=constant)


def nb_deviance(y: np.ndarray, mu: np.ndarray, alpha: float) -> float:
    """2 sum(y ln(y/mu) - (y + 1/alpha) ln((y + 1/alpha) / (mu + 1/alpha)))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(y > 0, y * np.log(y / mu), 0.0)
    return float(2 * np.sum(first - (y + 1 / alpha) * np.log((y + 1 / alpha) / (mu + 1 / alpha))))


def reference(df: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """statsmodels on the pandas design matrix."""
    rows, first = counts_frame(df, params)
    x = design_frame(rows, first, params)
    y = rows["observed"].astype(float)
    n = len(y)
    if params.get("family", "negative_binomial") == "poisson":
        fit = GLM(y, x, family=families.Poisson()).fit()
        k = x.shape[1]
        alpha = None
        expected = fit.fittedvalues.to_numpy()
        summary = {"deviance": fit.deviance, "aic": -2 * fit.llf + 2 * k}
        summary["bic"] = -2 * fit.llf + k * np.log(n)
        lower, upper = stats.poisson.ppf(0.025, expected), stats.poisson.ppf(0.975, expected)
        params_, bse, z, p = fit.params, fit.bse, fit.tvalues, fit.pvalues
        ci = fit.conf_int()
    else:
        model = NegativeBinomial(y, x, loglike_method="nb2")
        with warnings.catch_warnings():  # a failed start warns: it is retried below
            warnings.simplefilter("ignore")
            fit = model.fit(method="newton", disp=0, maxiter=100)  # statsmodels' own start
        if not (fit.mle_retvals["converged"] and np.isfinite(fit.params).all()):
            # Little overdispersion: Newton's steps from it leave the domain. BFGS on log
            # alpha first (statsmodels' default method), then Newton from there.
            rough = model.fit(method="bfgs", disp=0, maxiter=1000)
            fit = model.fit(start_params=rough.params, method="newton", disp=0, maxiter=100)
        assert fit.mle_retvals["converged"] and np.isfinite(fit.params).all()
        alpha = fit.params["alpha"]
        expected = np.asarray(fit.predict())
        k = x.shape[1] + 1
        summary = {"deviance": nb_deviance(y.to_numpy(), expected, alpha)}
        summary["aic"] = -2 * fit.llf + 2 * k
        summary["bic"] = -2 * fit.llf + k * np.log(n)
        size, prob = 1 / alpha, 1 / (1 + alpha * expected)
        lower, upper = stats.nbinom.ppf(0.025, size, prob), stats.nbinom.ppf(0.975, size, prob)
        params_, bse, z, p = (
            s.drop("alpha") for s in (fit.params, fit.bse, fit.tvalues, fit.pvalues)
        )
        ci = fit.conf_int().drop("alpha")
    coefficients = [
        {
            "name": name,
            "estimate": params_[name],
            "std_error": bse[name],
            "z": z[name],
            "p_value": p[name],
            "ci_lower": ci.loc[name, 0],
            "ci_upper": ci.loc[name, 1],
            "irr": np.exp(params_[name]),
        }
        for name in x.columns
    ]
    summary |= {"log_likelihood": fit.llf, "alpha": alpha, "n": n, "coefficients": coefficients}
    rows["expected"], rows["lower"], rows["upper"] = expected, lower, upper
    return {"summary": summary, "fitted": rows}


def planted(
    unit: str, *, dispersion: float | None = 4.0, groups: int = 3, seed: int = 1
) -> pd.DataFrame:
    """Counts with a weekly cycle, a trend and group levels; NB (size `dispersion`) or Poisson."""
    rng = np.random.default_rng(seed)
    n = {"hour": 24 * 21, "day": 140, "week": 80}[unit]
    stamps = pd.date_range(START, periods=n, freq=RULES[unit])
    weekday = np.array([0.0, 0.1, 0.15, 0.1, 0.2, 0.5, 0.4])[stamps.day_of_week]
    hour = 0.6 * np.sin(np.pi * stamps.hour / 24) if unit == "hour" else 0.0
    season = 0.2 * np.cos(2 * np.pi * stamps.month / 12)
    counts: dict[Any, list[int]] = {}
    for g in range(groups):
        base = {"hour": 0.8, "day": 2.5, "week": 4.0}[unit] + 0.3 * g
        mu = np.exp(base + weekday + hour + season + 0.004 * np.arange(n))
        if dispersion is None:
            y = rng.poisson(mu)
        else:
            y = rng.negative_binomial(dispersion, dispersion / (dispersion + mu))
        counts[f"g{g}"] = y.tolist()
    return events(rng, unit, counts)


def step_for(make_step: StepFactory, written: Written, df: pd.DataFrame, **overrides: Any):
    path, columns = written(to_table(df))
    return make_step(parquet_path=path, columns=columns, **overrides)


def assert_close(got: Any, want: Any, what: str) -> None:
    if want is None:
        assert got is None, what
    else:
        assert got == pytest.approx(want, rel=RTOL, abs=1e-12), what


def assert_equal_to_reference(result: Any, want: dict[str, Any], params: dict[str, Any]) -> None:
    summary, ref = result.summary, want["summary"]
    for key in ("log_likelihood", "aic", "bic", "alpha", "deviance"):
        assert_close(summary[key], ref[key], key)
    assert summary["n"] == ref["n"]
    assert [c["name"] for c in summary["coefficients"]] == [c["name"] for c in ref["coefficients"]]
    for got, expected in zip(summary["coefficients"], ref["coefficients"], strict=True):
        for key, value in expected.items():
            if key != "name":
                assert_close(got[key], value, f"{got['name']}.{key}")
    coefficients, fitted = (pd.read_csv(a.path) for a in result.artifacts)
    assert list(coefficients.columns) == [
        "name", "estimate", "std_error", "z", "p_value", "ci_lower", "ci_upper", "irr"
    ]  # fmt: skip
    for row, expected in zip(coefficients.to_dict("records"), ref["coefficients"], strict=True):
        for key, value in expected.items():
            assert row[key] == (value if key == "name" else pytest.approx(value, rel=RTOL))
    frame = want["fitted"]
    group = params.get("group_column")
    columns = ["period", "observed", "expected", "lower", "upper"]
    assert list(fitted.columns) == ([group] if group else []) + columns
    assert pd.to_datetime(fitted["period"]).tolist() == frame["period"].tolist()
    assert fitted["observed"].tolist() == frame["observed"].tolist()
    np.testing.assert_allclose(fitted["expected"], frame["expected"], rtol=RTOL)
    assert fitted["lower"].tolist() == frame["lower"].astype(int).tolist()
    assert fitted["upper"].tolist() == frame["upper"].astype(int).tolist()
    if group:
        assert fitted[group].tolist() == frame["group"].tolist()


@pytest.mark.parametrize(
    ("unit", "features", "family"),
    [
        ("day", ["day_of_week", "trend"], "negative_binomial"),
        ("day", ["is_weekend", "month"], "poisson"),
        ("hour", ["hour", "day_of_week", "trend"], "negative_binomial"),
        ("week", ["month", "trend"], "negative_binomial"),
        ("day", ["day_of_week", "month", "trend"], "little overdispersion"),
    ],
)
def test_equals_statsmodels_on_a_pandas_design_matrix(
    make_step: StepFactory, written: Written, unit: str, features: list[str], family: str
) -> None:
    size = {"poisson": None, "negative_binomial": 4.0, "little overdispersion": 400.0}[family]
    df = planted(unit, dispersion=size)
    family = "poisson" if size is None else "negative_binomial"
    params = {
        "timestamp_column": "at",
        "period": unit,
        "group_column": "grp",
        "features": features,
        "family": family,
    }
    result = count_model.run(step_for(make_step, written, df), CountModelParams(**params))
    assert_equal_to_reference(result, reference(df, params), params)
    s = result.summary
    assert s["converged"] and s["note"] is None and s["groups"] == 3
    assert s["events"] == len(df)
    names = [c["name"] for c in s["coefficients"]]
    assert "grp[g1]" in names and "grp[g2]" in names
    if size is not None:  # the planted alpha, give or take the season's unmodelled part
        assert 0.5 / size < s["alpha"] < 2.5 / size
        by_name = {c["name"]: c for c in s["coefficients"]}
        assert by_name["trend"]["estimate"] > 0  # planted 0.004 a period, less the season's fall
        if "day_of_week" in features:  # planted: Saturday 0.5 above Monday
            assert (
                by_name["day_of_week[Sat]"]["ci_lower"]
                < 0.5
                < by_name["day_of_week[Sat]"]["ci_upper"]
            )


def test_ungrouped_partial_period_and_nulls(make_step: StepFactory, written: Written) -> None:
    rng = np.random.default_rng(4)
    df = planted("day", groups=1)
    # Three events the next day, by 10:00: a day is complete once the data reach it.
    tail = pd.DataFrame({"at": [pd.Timestamp("2024-05-20 10:00")] * 3, "grp": "g0"})
    df = pd.concat([df, tail], ignore_index=True)
    df.loc[rng.choice(len(df), 20, replace=False), "at"] = pd.NaT
    params = {"timestamp_column": "at", "features": ["day_of_week"]}
    result = count_model.run(step_for(make_step, written, df), CountModelParams(**params))
    assert_equal_to_reference(result, reference(df, params), params)
    assert result.summary["null_timestamps"] == 20
    assert result.summary["groups"] is None and result.summary["partial_period_left_out"] is None
    assert result.summary["last_period"] == "2024-05-20"

    # An event 10 minutes into the hour after the last: that hour is partial, left out.
    hourly = {"timestamp_column": "at", "period": "hour", "features": ["hour"], "family": "poisson"}
    df = planted("hour", groups=1, dispersion=None)
    late = pd.Timestamp(START) + pd.Timedelta(hours=24 * 21, minutes=10)
    df = pd.concat([df, pd.DataFrame({"at": [late], "grp": "g0"})], ignore_index=True)
    result = count_model.run(step_for(make_step, written, df), CountModelParams(**hourly))
    assert_equal_to_reference(result, reference(df, hourly), hourly)
    assert result.summary["partial_period_left_out"] == {
        "period": late.floor("h").isoformat(),
        "events": 1,
    }


def test_negative_binomial_on_poisson_counts_says_so(
    make_step: StepFactory, written: Written
) -> None:
    # Underdispersed counts (10 or 11 a day): the likelihood is highest at alpha = 0.
    rng = np.random.default_rng(5)
    df = events(rng, "day", {"g0": [10 + i % 2 for i in range(60)]})
    params = CountModelParams(timestamp_column="at", features=["day_of_week"])
    result = count_model.run(step_for(make_step, written, df), params)
    s = result.summary
    assert s["method"] == "bfgs" and s["alpha"] < 1e-4 and "not overdispersed" in s["note"]
    poisson = count_model.run(
        step_for(make_step, written, df),
        CountModelParams(timestamp_column="at", features=["day_of_week"], family="poisson"),
    )
    for nb, p in zip(s["coefficients"], poisson.summary["coefficients"], strict=True):
        assert nb["estimate"] == pytest.approx(p["estimate"], rel=1e-3, abs=1e-3)


def test_constant_features_are_left_out(make_step: StepFactory, written: Written) -> None:
    # Monday to Friday: is_weekend is 0 everywhere; all in January: month has one level.
    rng = np.random.default_rng(2)
    days = pd.date_range("2024-01-01", "2024-01-05")
    stamps = [
        d + pd.Timedelta(seconds=int(s))
        for i, d in enumerate(days)
        for s in rng.integers(0, 86400, 5 + i)
    ]
    df = pd.DataFrame({"at": stamps})
    params = {"timestamp_column": "at", "features": ["is_weekend", "month", "trend"],
              "family": "poisson", "include_partial_period": True}  # fmt: skip
    result = count_model.run(step_for(make_step, written, df), CountModelParams(**params))
    assert result.summary["left_out"] == ["is_weekend"]
    assert [c["name"] for c in result.summary["coefficients"]] == ["const", "trend"]
    assert_equal_to_reference(result, reference(df, params), params)


def test_no_events_and_a_single_period_fail_clearly(
    make_step: StepFactory, written: Written
) -> None:
    df = pd.DataFrame({"at": pd.Series([pd.NaT] * 4, dtype="datetime64[us]")})
    params = CountModelParams(timestamp_column="at", features=["trend"])
    with pytest.raises(ProcessorInputError, match="no events"):
        count_model.run(step_for(make_step, written, df), params)
    df = pd.DataFrame({"at": [pd.Timestamp("2024-01-01 10:00")] * 5})
    with pytest.raises(ProcessorInputError, match="too few"):
        count_model.run(step_for(make_step, written, df), params)


def test_too_large_a_model_is_refused(make_step: StepFactory, written: Written) -> None:
    from services.processing.processors.base import ComputeLimits

    df = planted("hour", groups=2)
    params = CountModelParams(timestamp_column="at", period="hour", features=["hour"])
    step = step_for(make_step, written, df, limits=ComputeLimits(batch_memory_bytes=10_000))
    with pytest.raises(ProcessorInputError, match="too large"):
        count_model.run(step, params)


def test_csv_formula_escape_of_group_names(make_step: StepFactory, written: Written) -> None:
    df = planted("day", groups=2)
    df["grp"] = df["grp"].map({"g0": "=HYPERLINK(x)", "g1": "plain"})
    params = CountModelParams(
        timestamp_column="at", group_column="grp", features=["trend"], csv_formula_escape=True
    )
    result = count_model.run(step_for(make_step, written, df), params)
    coefficients, fitted = (a.path.read_text() for a in result.artifacts)
    assert '"grp[plain]"' in coefficients  # the reference level is =HYPERLINK(x)
    assert fitted.splitlines()[1].startswith('"\'=HYPERLINK(x)",')
    assert result.summary["coefficients"][-1]["name"] == "grp[plain]"


def test_cancel_at_every_progress_report(make_step: StepFactory, written: Written) -> None:
    df = planted("day")
    path, columns = written(to_table(df))
    params = CountModelParams(timestamp_column="at", group_column="grp", features=["day_of_week"])
    calls = CancelOnCall(0)
    count_model.run(make_step(parquet_path=path, columns=columns, report=calls), params)
    assert calls.calls > 5
    for n in range(1, calls.calls + 1):
        with pytest.raises(JobCancelled):
            step = make_step(parquet_path=path, columns=columns, report=CancelOnCall(n))
            count_model.run(step, params)


COLUMNS = [("at", "timestamp"), ("day", "date"), ("grp", "string"), ("observed", "integer")]


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"timestamp_column": "at"}, "features", "required"),
        ({"timestamp_column": "at", "features": ["holiday"]}, "features", "holiday calendar"),
        ({"timestamp_column": "at", "features": ["weather"]}, "features[0]", "day_of_week"),
        ({"timestamp_column": "at", "features": ["hour"]}, "features", "hour periods"),
        (
            {"timestamp_column": "at", "period": "week", "features": ["day_of_week"]},
            "features",
            "day or hour",
        ),
        ({"timestamp_column": "at", "features": ["trend", "trend"]}, "features", "twice"),
        (
            {"timestamp_column": "at", "features": ["day_of_week", "is_weekend"]},
            "features",
            "collinear",
        ),
        ({"timestamp_column": "at", "features": [], "period": "month"}, "period", "hour"),
        ({"timestamp_column": "at", "features": [], "family": "gamma"}, "family", "poisson"),
        ({"timestamp_column": "grp", "features": []}, "timestamp_column", "timestamp"),
        ({"timestamp_column": "day", "period": "hour", "features": []}, "period", "dates"),
        (
            {"timestamp_column": "at", "group_column": "observed", "features": []},
            "group_column",
            "output column",
        ),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    from schemas.domain.records import ColumnInfo

    columns = [ColumnInfo(name=n, type=t, null_count=0) for n, t in COLUMNS]
    with pytest.raises(ParamsError) as error:
        registry.validate_step("count_model", params, columns)
    assert error.value.field == field
    assert text in error.value.message


def test_registered_isolated_with_its_schema() -> None:
    processor = registry.PROCESSORS["count_model"]
    assert processor.isolated and processor.artifacts == ["coefficients.csv", "fitted.csv"]
    schema = processor.params_model.model_json_schema()
    assert schema["additionalProperties"] is False and "features" in schema["required"]
