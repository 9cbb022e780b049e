"""count_model: event counts per period explained by calendar features, Poisson or NB2.

Counts are the events (rows with a timestamp) per hour, day or ISO week (common.py); with a
group column, per group too. As in count_anomalies, a series (the whole dataset, or a group)
runs from its first event to the dataset's last period, periods without events counting 0, and
a last period the data end in (before its last day, or an hour's last minute) is left out
unless `include_partial_period`.

The model: log E[count] = X b, X the design matrix of design.py (const, the features' columns,
group indicators). `family`:
- negative_binomial: NB2 (variance mu + alpha mu^2) with alpha estimated by maximum likelihood
  with b, as statsmodels.discrete.discrete_model.NegativeBinomial(y, X, loglike_method="nb2")
  .fit(method="newton") computes it (the fit statsmodels starts from its Poisson estimates);
- poisson: statsmodels' GLM with the Poisson family (IRLS).

Summary: per coefficient estimate, std_error, z, p_value (normal), the 95% CI and irr =
exp(estimate); log_likelihood, aic (-2 llf + 2k, alpha counted for NB), bic (-2 llf + k ln n),
alpha (null for Poisson), deviance (the family's at the estimates: for NB, statsmodels'
NegativeBinomial(alpha) family deviance), n (rows of X), converged. Artifacts:
coefficients.csv (the coefficients) and fitted.csv (the group column when grouped, period,
observed, expected, and lower/upper: the 2.5% and 97.5% quantiles of the fitted distribution,
a 95% prediction interval at the estimates, without their uncertainty).

`holiday` is not offered: it needs a holiday calendar (for which country?), and no calendar
library is installed.
"""

from dataclasses import dataclass
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import (
    ArtifactFile,
    ParamsError,
    ProcessorInputError,
    StepInput,
    StepOutput,
    artifact_name,
)
from services.processing.processors.columns import quote
from services.processing.processors.duck import (
    connect,
    parquet_source,
    parquet_types,
    run_with_progress,
)
from services.processing.processors.events.common import (
    check_group,
    check_timestamp,
    ends_early,
    group_expr,
    period_index_sql,
    period_label,
    timestamp_expr,
)
from services.processing.processors.output import (
    CSV_TYPE,
    TEXT_TYPES,
    CsvFormulaEscape,
    copy_to_file,
    escape_formula,
    escaped_cells,
    force_quote,
)

COEFFICIENTS = "coefficients.csv"
FITTED = "fitted.csv"
Feature = Literal["day_of_week", "is_weekend", "month", "hour", "trend"]
PERIODS_OF = {
    "day_of_week": {"hour", "day"},
    "is_weekend": {"hour", "day"},
    "hour": {"hour"},
    "month": {"hour", "day", "week"},
    "trend": {"hour", "day", "week"},
}
WIDTHS = {"day_of_week": 6, "is_weekend": 1, "month": 11, "hour": 23, "trend": 1}  # columns
OUTPUT_COLUMNS = {"period", "observed", "expected", "lower", "upper"}
SMALL_ALPHA = 1e-4  # below it, a negative binomial fit is a Poisson fit
MAX_COLUMNS = 1000  # coefficients: Newton's method inverts a Hessian of this size
MATRIX_SHARE = 8  # of the numpy budget for X: statsmodels holds several arrays of its size


class CountModelParams(BaseModel):
    """Explain event counts per period by calendar features (negative binomial or Poisson)."""

    model_config = ConfigDict(extra="forbid", title="count_model")
    timestamp_column: str = Field(description="Timestamp (or date) of each event (row).")
    period: Literal["hour", "day", "week"] = Field(
        default="day", description="Counting period; weeks run Monday to Sunday."
    )
    group_column: str | None = Field(
        default=None, description="Count per group; the model gets one coefficient per group."
    )
    features: list[Feature] = Field(
        description="Calendar features: day_of_week and is_weekend need hour or day periods,"
        " hour needs hour periods; trend counts periods from the first. [] fits the mean only."
    )
    family: Literal["negative_binomial", "poisson"] = Field(
        default="negative_binomial",
        description="negative_binomial: NB2 with its dispersion by maximum likelihood.",
    )
    include_partial_period: bool = Field(
        default=False, description="Keep the last period when the data end before its end."
    )
    csv_formula_escape: CsvFormulaEscape = False

    @field_validator("features", mode="before")
    @classmethod
    def _no_holiday(cls, features: Any) -> Any:
        if isinstance(features, list) and "holiday" in features:
            raise ValueError(
                "holiday is not available: it needs a holiday calendar and none is installed"
            )
        return features

    @field_validator("features")
    @classmethod
    def _fit_the_period(cls, features: list[str], info: ValidationInfo) -> list[str]:
        if len(set(features)) != len(features):
            raise ValueError("a feature is listed twice")
        period = info.data.get("period")
        for feature in features:
            if period is not None and period not in PERIODS_OF[feature]:
                raise ValueError(f"{feature} needs {' or '.join(sorted(PERIODS_OF[feature]))}"
                                 f" periods, not {period}")  # fmt: skip
        if {"day_of_week", "is_weekend"} <= set(features):
            raise ValueError("day_of_week and is_weekend together are collinear: choose one")
        return features


def check_columns(params: CountModelParams, columns: list[ColumnInfo]) -> None:
    """A timestamp column (a date will do but for hours) and a scalar group column."""
    column = check_timestamp(params.timestamp_column, columns)
    if params.period == "hour" and column.type == "date":
        raise ParamsError(
            f"column {column.name!r} holds dates: hour periods need a timestamp column",
            field="period",
        )
    if params.group_column is not None:
        check_group(params.group_column, columns, reserved=OUTPUT_COLUMNS)


def run(step: StepInput, params: CountModelParams) -> StepOutput:
    """Count per period (and group), build the design matrix, fit, write the tables."""
    import numpy as np

    from services.processing.processors.events import design as designs
    from services.processing.processors.events import model_fit

    check_columns(params, step.columns)
    unit = params.period
    step.report(0.0, "counting events per period")
    with connect(step) as con:
        types = parquet_types(con, step.parquet_path)
        counts = _count(con, step, params, types)
        step.report(0.45, "building the design matrix")
        design = designs.build(
            unit,
            list(params.features),
            counts.dense.periods,
            counts.first,
            counts.dense.series,
            params.group_column,
            counts.labels,
        )
        x, y = design.matrix, counts.dense.counts.astype(np.float64)
        k = x.shape[1] + (params.family == "negative_binomial")
        if len(y) <= k:
            raise ProcessorInputError(
                f"{len(y)} counts are too few to estimate {k} parameters: use a shorter period"
                " or fewer features"
            )
        if np.linalg.matrix_rank(x) < x.shape[1]:
            raise ProcessorInputError(
                f"the features are collinear on this data ({', '.join(design.names)}): remove one"
            )
        family = params.family.replace("_", " ")
        step.report(0.5, f"fitting the {family} model")

        def iteration(n: int) -> None:
            # Newton's steps, each a report (and a chance to stop); progress creeps to 0.9.
            step.report(0.5 + 0.4 * n / (n + 5), f"fitting the {family} model (step {n})")

        fitted = model_fit.fit(y, x, params.family, iteration)
        step.report(0.9, "writing the tables")
        lower, upper = model_fit.interval(fitted.expected, fitted.alpha)
        coefficients = [
            {
                "name": name,
                "estimate": float(fitted.estimate[i]),
                "std_error": float(fitted.std_error[i]),
                "z": float(fitted.z[i]),
                "p_value": float(fitted.p_value[i]),
                "ci_lower": float(fitted.ci_lower[i]),
                "ci_upper": float(fitted.ci_upper[i]),
                "irr": float(np.exp(fitted.estimate[i])),
            }
            for i, name in enumerate(design.names)
        ]
        tables = Tables(con, step, params, types)
        artifacts = [
            tables.coefficients(coefficients),
            tables.fitted(counts.dense, fitted.expected, lower, upper, start=0.95),
        ]
    summary = {
        "family": params.family,
        "period": unit,
        "features": list(params.features),
        "left_out": design.left_out,
        "n": len(y),
        "events": counts.events,
        "null_timestamps": next(
            c.null_count for c in step.columns if c.name == params.timestamp_column
        ),
        "groups": len(counts.labels) if params.group_column is not None else None,
        "first_period": period_label(unit, counts.first),
        "last_period": period_label(unit, counts.last),
        "partial_period_left_out": counts.partial,
        "log_likelihood": fitted.log_likelihood,
        "aic": fitted.aic,
        "bic": fitted.bic,
        "alpha": fitted.alpha,
        "alpha_std_error": fitted.alpha_std_error,
        "deviance": fitted.deviance,
        "converged": fitted.converged,
        "iterations": fitted.iterations,
        "method": fitted.method,
        "note": _note(fitted),
        "coefficients": coefficients,
    }
    return StepOutput(summary=json_safe(summary), artifacts=artifacts)


@dataclass
class Counts:
    """The series to model: counts per period laid end to end, and what was counted."""

    dense: Any  # periods.Dense: each series from its first event to `last`
    first: int
    last: int
    events: int
    labels: list[str]  # the groups' names in coefficients, in series order
    partial: dict[str, Any] | None  # a partial last period left out: its label and events


def _count(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    params: CountModelParams,
    types: dict[str, str],
) -> Counts:
    """Counts per series and period (temp tables `ev`, then `series`), as dense arrays."""
    import numpy as np

    from services.processing.processors.events.periods import densify

    src, unit = parquet_source(step.parquet_path), params.period
    ts = timestamp_expr(params.timestamp_column, types[params.timestamp_column])
    group = params.group_column
    g = f"{group_expr(group, types[group])} AS g, " if group is not None else ""
    run_with_progress(
        con,
        f"CREATE TEMP TABLE ev AS SELECT {g}{period_index_sql(unit, ts)} AS p,"
        f" count(*) AS n FROM {src} WHERE {ts} IS NOT NULL GROUP BY ALL",
        step.report,
        "counting events per period",
        end=0.4,
    )
    row = con.execute("SELECT min(p), max(p), coalesce(sum(n), 0) FROM ev").fetchone()
    assert row is not None
    if row[0] is None:
        raise ProcessorInputError(
            f"no events: {params.timestamp_column!r} is null in every row",
            column=params.timestamp_column,
        )
    first, last, events = int(row[0]), int(row[1]), int(row[2])
    partial = None
    cut = last > first and not params.include_partial_period
    if cut and ends_early(con, src, ts, unit, last):
        left = con.execute(f"SELECT sum(n) FROM ev WHERE p = {last}").fetchone()
        n = int(left[0]) if left else 0
        partial = {"period": period_label(unit, last), "events": n}
        con.execute(f"DELETE FROM ev WHERE p = {last}")
        events, last = events - n, last - 1
    grouped = group is not None
    con.execute(
        "CREATE TEMP TABLE series AS SELECT"
        f" row_number() OVER ({'ORDER BY g ASC NULLS LAST' if grouped else ''}) - 1 AS sid,"
        f" {'g, ' if grouped else ''}min(p) AS first FROM ev"
        f" {'GROUP BY g' if grouped else ''} HAVING count(*) > 0"
    )
    on = "e.g IS NOT DISTINCT FROM s.g" if grouped else "TRUE"
    sparse = con.execute(
        f"SELECT s.sid, e.p, e.n FROM ev AS e JOIN series AS s ON {on}"
    ).fetchnumpy()
    starts = np.asarray(
        con.execute("SELECT first FROM series ORDER BY sid").fetchnumpy()["first"], dtype=np.int64
    )
    labels = []
    if grouped:
        labels = [_level(v) for (v,) in con.execute("SELECT g FROM series ORDER BY sid").fetchall()]
    rows = int((last - starts + 1).sum())
    width = 1 + sum(WIDTHS[f] for f in params.features) + max(len(labels) - 1, 0)  # at most
    if width > MAX_COLUMNS or rows * width * 8 > step.limits.batch_memory_bytes // MATRIX_SHARE:
        raise ProcessorInputError(
            f"{rows:,} counts x up to {width} columns is too large a model for this worker:"
            " choose a longer period or fewer groups"
        )
    dense = densify(
        starts,
        last,
        np.asarray(sparse["sid"], dtype=np.int64),
        np.asarray(sparse["p"], dtype=np.int64),
        np.asarray(sparse["n"], dtype=np.int64),
    )
    return Counts(dense, first, last, events, labels, partial)


def _note(fitted: Any) -> str | None:
    """What a reader of the summary should know about the fit, if anything."""
    if fitted.alpha is not None and fitted.alpha < SMALL_ALPHA:
        return (
            "alpha is near 0: the counts are not overdispersed and the likelihood is highest at"
            " the boundary alpha = 0 (approached by BFGS on log alpha, which stops short of it);"
            " the poisson family fits these counts as well"
        )
    if not fitted.converged:
        return f"the {fitted.method} fit did not converge in {fitted.iterations} iterations"
    return None


def _level(value: Any) -> str:
    """A group value as its coefficient names it ("null" for the rows without a group)."""
    shown = json_safe(value)
    return "null" if shown is None else str(shown)


class Tables:
    """coefficients.csv and fitted.csv, written by DuckDB from Arrow tables."""

    def __init__(self, con: Any, step: StepInput, params: CountModelParams, types: dict[str, str]):
        self.con, self.step, self.params, self.types = con, step, params, types

    def _write(self, base: str, query: str, text: list[str], *, start: float) -> ArtifactFile:
        name = artifact_name(base, self.step.artifact_suffix)
        path = self.step.output_dir / name
        options = "FORMAT csv, HEADER true"
        if self.params.csv_formula_escape:
            options += force_quote(text)
        sha = copy_to_file(
            self.con, query, path, options, self.step, f"writing {name}", start=start, end=1.0
        )
        return ArtifactFile(name, path, CSV_TYPE, sha)

    def coefficients(self, rows: list[dict[str, Any]]) -> ArtifactFile:
        import pyarrow as pa

        from services.processing.processors.events.periods import select_with_nulls

        escape = escape_formula if self.params.csv_formula_escape else str
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        columns["name"] = [escape(name) for name in columns["name"]]
        table = pa.table({k: pa.array(v) for k, v in columns.items()})
        self.con.register("coefficient_rows", table)
        try:
            query = select_with_nulls("coefficient_rows", table.schema)
            return self._write(COEFFICIENTS, query, ["name"], start=0.9)
        finally:
            self.con.unregister("coefficient_rows")

    def fitted(
        self, dense: Any, expected: Any, lower: Any, upper: Any, *, start: float
    ) -> ArtifactFile:
        import numpy as np
        import pyarrow as pa

        from services.processing.processors.arrays import to_arrow
        from services.processing.processors.events.periods import period_array, select_with_nulls

        table = pa.table(
            {
                "sid": to_arrow(dense.series),
                "period": period_array(self.params.period, dense.periods),
                "observed": to_arrow(dense.counts),
                "expected": to_arrow(np.asarray(expected, dtype=np.float64)),
                "lower": to_arrow(np.asarray(lower).astype(np.int64)),
                "upper": to_arrow(np.asarray(upper).astype(np.int64)),
            }
        )
        keys, text = "", []
        name = self.params.group_column
        if name is not None:
            duck_type = self.types[name]
            if self.params.csv_formula_escape:
                keys = f"{escaped_cells('s.g', duck_type)} AS {quote(escape_formula(name))}, "
                text = [escape_formula(name)] if duck_type in TEXT_TYPES else []
            else:
                keys = f"s.g AS {quote(name)}, "
        self.con.register("fitted_rows", table)
        try:
            query = (
                f"SELECT {keys}f.period, f.observed, f.expected, f.lower, f.upper FROM"
                f" ({select_with_nulls('fitted_rows', table.schema)}) AS f"
                " JOIN series AS s ON s.sid = f.sid ORDER BY f.sid, f.period"
            )
            return self._write(FITTED, query, text, start=start)
        finally:
            self.con.unregister("fitted_rows")
