"""anomalies: flag outlying values per numeric column (z-score, modified z-score, IQR).

- zscore: z = (x - mean) / std with the population std (ddof=0), as
  scipy.stats.zscore(nan_policy="omit"); flagged when |z| > threshold (default 3.0).
- modified_zscore (Iglewicz & Hoaglin, 1993): M = 0.6745 * (x - median) / MAD with
  MAD = median(|x - median|); flagged when |M| > threshold (default 3.5). When MAD = 0
  (more than half the values equal the median) M = (x - median) / (1.253314 * MeanAD),
  the IBM SPSS / Cognos Analytics convention ("Modified z score"), where MeanAD is the
  mean absolute deviation around the median, mean(|x - median|): 1.253314 = sqrt(pi/2)
  turns it into a standard deviation for normal data, as 1/0.6745 does for the MAD.
- iqr (Tukey's fences): q1, q3 by linear interpolation (numpy's default), IQR = q3 - q1;
  flagged when x < q1 - k*IQR or x > q3 + k*IQR, k = threshold (default 1.5). The score
  is the signed distance beyond the fence in IQR units: (x - lower) / IQR below (< 0),
  (x - upper) / IQR above (> 0).

Nulls (and float NaN) are ignored. A column whose scale (std, MAD and MeanAD, or IQR)
is 0 flags nothing, since every score would divide by zero; its summary says so.
The artifact anomalies.csv lists row_number (1-based data row of the dataset), column,
value (as stored) and score, ordered by row then by column order. With csv_formula_escape a
column name starting with = + - @, tab or CR is written with a leading ' (output.py).

Centre and scale come from the job's column profiles. Every rule flags the values below
one bound and above another, so a column's flags are looked for among its profiled
extremes (the lowest and highest 2% with their rows) when the rule flags neither edge of
them, and by a scan of the Parquet copy only otherwise. Both give the same rows: the
same SQL rule is evaluated on the same values.
"""

from collections.abc import Sequence
from typing import Any, Literal

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.aggregates import Quantiles, aggregate_columns
from services.processing.processors.arrays import to_arrow
from services.processing.processors.base import ArtifactFile, StepInput, StepOutput, artifact_name
from services.processing.processors.columns import (
    is_numeric,
    reject_duplicate_columns,
    select_columns,
    value_expr,
)
from services.processing.processors.duck import (
    batched,
    connect,
    literal,
    parquet_source,
    parquet_types,
    planned_wide,
    run_with_progress,
    scan_width,
)
from services.processing.processors.numeric import ColumnProfile, Extremes
from services.processing.processors.output import CsvFormulaEscape, escape_formula, force_quote
from services.processing.processors.profiles import numeric_profiles

DEFAULT_THRESHOLDS = {"zscore": 3.0, "modified_zscore": 3.5, "iqr": 1.5}
ARTIFACT = "anomalies.csv"


class AnomaliesParams(BaseModel):
    """Flag outliers per numeric column."""

    model_config = ConfigDict(extra="forbid", title="anomalies")
    columns: list[str] | None = Field(
        default=None, min_length=1, description="Numeric columns to check (default: all numeric)."
    )
    method: Literal["zscore", "modified_zscore", "iqr"] = Field(
        description="zscore: |z| > t; modified_zscore: |0.6745(x-median)/MAD| > t;"
        " iqr: outside [q1 - t*IQR, q3 + t*IQR]."
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Default 3.0 (zscore), 3.5 (modified_zscore), 1.5 (iqr: the k of the fences).",
    )
    csv_formula_escape: CsvFormulaEscape = False
    _unique = field_validator("columns")(reject_duplicate_columns)


def check_columns(params: AnomaliesParams, columns: list[ColumnInfo]) -> None:
    """Listed columns must exist and be numeric."""
    select_columns(params.columns, columns, field="columns", accept=is_numeric, kind="a numeric")


def run(step: StepInput, params: AnomaliesParams) -> StepOutput:
    """Compute each column's centre and scale, then write the flagged values."""
    selected = select_columns(params.columns, step.columns, field="columns", accept=is_numeric)
    threshold = (
        params.threshold if params.threshold is not None else DEFAULT_THRESHOLDS[params.method]
    )
    src = parquet_source(step.parquet_path, row_numbers=True)
    name = artifact_name(ARTIFACT, step.artifact_suffix)
    path = step.output_dir / name
    with connect(step) as con:
        types = parquet_types(con, step.parquet_path)
        raw = [value_expr(c.name, types[c.name]) for c in selected]
        exprs = [f"CAST({e} AS DOUBLE)" for e in raw]
        rows = con.execute(f"SELECT count(*) FROM {src}").fetchall()[0][0]  # from metadata
        profiles = numeric_profiles(con, step, src, selected, types, rows, end=0.25)
        stats = _statistics(
            con, step, src, selected, profiles, exprs, params.method, threshold, rows
        )
        con.execute(
            "CREATE TEMP TABLE flagged"
            " (row_number BIGINT, col INTEGER, value VARCHAR, score DOUBLE)"
        )
        flagging = Flagging(con, step, src, selected, profiles, raw, exprs, params.method)
        todo = [i for i, s in enumerate(stats) if _scale(params.method, s) is not None]
        batches = batched(todo, scan_width(step))
        for n, batch in enumerate(batches):
            part = 0.4 / len(batches)
            flagging.flag(batch, stats, threshold, start=0.5 + n * part, end=0.5 + (n + 1) * part)
        counts = dict(con.execute("SELECT col, count(*) FROM flagged GROUP BY col").fetchall())
        # Column names are the data's text; values are numbers, never escaped.
        escape = escape_formula if params.csv_formula_escape else str
        names = "[" + ", ".join(literal(escape(c.name)) for c in selected) + "]"
        options = "FORMAT csv, HEADER true"
        if params.csv_formula_escape:
            options += force_quote(["column"])
        copy = (
            f"COPY (SELECT row_number, {names}[col + 1] AS column, value, score FROM flagged"
            f" ORDER BY row_number, col) TO {literal(str(path))} ({options})"
        )
        run_with_progress(con, copy, step.report, f"writing {name}", start=0.9)
    columns = {}
    for i, (column, s) in enumerate(zip(selected, stats, strict=True)):
        columns[column.name] = {"count": counts.get(i, 0), **s}
    summary = {
        "method": params.method,
        "threshold": threshold,
        "total": sum(counts.values()),
        "columns": columns,
    }
    artifact = ArtifactFile(name=name, path=path, content_type="text/csv")
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _statistics(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    selected: list[ColumnInfo],
    profiles: dict[str, ColumnProfile],
    exprs: list[str],
    method: str,
    threshold: float,
    rows: int,
) -> list[dict[str, Any]]:
    """Per column: non-null count and the centre/scale of the method (a second pass for MAD)."""
    stats: list[dict[str, Any]] = []
    for column in selected:
        profile = profiles[column.name]
        s: dict[str, Any] = {"non_null": profile.count}
        if method == "zscore":
            s.update(mean=profile.mean, std=profile.std(ddof=0))
        elif method == "iqr":
            s.update(q1=profile.quantile(0.25), q3=profile.quantile(0.75))
        else:
            s["median"] = profile.quantile(0.5)
        stats.append(s)
    if method == "modified_zscore":
        deviations = [
            f"abs({e} - {literal(s['median'])})" for e, s in zip(exprs, stats, strict=True)
        ]
        spread = aggregate_columns(
            con,
            src,
            deviations,
            {"mad": Quantiles(0.5), "meanad": "avg({e})"},
            step,
            rows,
            start=0.25,
            end=0.5,
        )
        for s, d in zip(stats, spread, strict=True):
            s["mad"] = d["mad"]
            if d["mad"] == 0:
                s["meanad"] = d["meanad"]
    for s in stats:
        if method == "iqr" and s["non_null"]:
            s["iqr"] = s["q3"] - s["q1"]
            s["lower"] = s["q1"] - threshold * s["iqr"]
            s["upper"] = s["q3"] + threshold * s["iqr"]
        if s["non_null"] and _scale(method, s) is None:
            s["note"] = "scale is 0 (constant column): nothing flagged"
    return stats


def _scale(method: str, s: dict[str, Any]) -> float | None:
    """The divisor of the score, or None when it is 0 (or there are no values)."""
    if method == "zscore":
        scale = s["std"]
    elif method == "iqr":
        scale = s.get("iqr")
    else:
        scale = s["mad"] / 0.6745 if s["mad"] else 1.253314 * (s.get("meanad") or 0.0)
    return scale if scale else None


SCAN_GROUP = 128  # columns whose flags one scan of the copy finds at once


class Flagging:
    """Writes the flagged values of columns into the temp table `flagged`, a batch at a time.

    A column's flags come from its profiled extremes (a few percent of its rows, in memory)
    when the rule flags neither edge of them, and from a scan of the Parquet copy otherwise.
    Columns that need a scan share one per SCAN_GROUP, each row passing any of their rules
    unnested into its flagged values: a query naming read_parquet once per column would plan
    the file's schema once per column, in memory that grows with the columns squared.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        step: StepInput,
        src: str,
        selected: list[ColumnInfo],
        profiles: dict[str, ColumnProfile],
        raw: list[str],
        exprs: list[str],
        method: str,
    ) -> None:
        self.con, self.step, self.src, self.selected = con, step, src, selected
        self.profiles, self.raw, self.exprs, self.method = profiles, raw, exprs, method

    def flag(
        self,
        batch: Sequence[int],
        stats: list[dict[str, Any]],
        threshold: float,
        *,
        start: float,
        end: float,
    ) -> None:
        con = self.con
        views: list[str] = []  # of extremes, registered on this connection until flagged
        try:
            rules = {i: _rule(self.exprs[i], self.method, stats[i], threshold) for i in batch}
            sources = {i: self._source(i, rules[i][0], views) for i in batch}
            scanned = [i for i in batch if sources[i] is None]
            branches = [
                self._branch(i, sources[i] or self.src, rules[i])
                for i in batch
                if sources[i] is not None or len(scanned) == 1
            ]
            # (the statement, how many columns it flags)
            inserts = [(" UNION ALL ".join(branches), len(branches))] if branches else []
            if len(scanned) > 1:
                inserts += [
                    (self._scan(group, rules), len(group)) for group in batched(scanned, SCAN_GROUP)
                ]
            for n, (sql, width) in enumerate(inserts):
                part = (end - start) / len(inserts)
                with planned_wide(con, 4 * width):  # a rule, a score and a value per column
                    run_with_progress(
                        con,
                        f"INSERT INTO flagged {sql}",
                        self.step.report,
                        "flagging values",
                        start=start + n * part,
                        end=start + (n + 1) * part,
                    )
        finally:
            for view in views:
                con.unregister(view)

    def _branch(self, i: int, source: str, rule: tuple[str, str]) -> str:
        where, score = rule
        return (
            f"SELECT file_row_number + 1 AS row_number, {i} AS col,"
            f" CAST({self.raw[i]} AS VARCHAR) AS value, {score} AS score"
            f" FROM {source} WHERE {where}"
        )

    def _scan(self, group: Sequence[int], rules: dict[int, tuple[str, str]]) -> str:
        """One scan of the copy: every flagged value of the group's columns."""
        flags = ", ".join(
            f"CASE WHEN {rules[i][0]} THEN {{'col': {i}, 'value':"
            f" CAST({self.raw[i]} AS VARCHAR), 'score': {rules[i][1]}}} END"
            for i in group
        )
        where = " OR ".join(f"({rules[i][0]})" for i in group)
        return (
            "SELECT row_number, f.col, f.value, f.score FROM"
            f" (SELECT file_row_number + 1 AS row_number, unnest([{flags}]) AS f"
            f" FROM {self.src} WHERE {where}) WHERE f IS NOT NULL"
        )

    def _source(self, i: int, where: str, views: list[str]) -> str | None:
        """The view of column i's extremes when they hold every flagged value, else None."""
        extremes = self.profiles[self.selected[i].name].extremes
        if extremes is None:
            return None
        view = f"anomaly_candidates_{i}"
        self.con.register(view, _candidates(self.selected[i].name, extremes))
        views.append(view)
        return view if _holds_every_flag(self.con, view, self.raw[i], extremes, where) else None


def _rule(x: str, method: str, s: dict[str, Any], threshold: float) -> tuple[str, str]:
    """(WHERE condition, score) of the flagged values of a column with a non-zero scale."""
    if method == "iqr":
        lower, upper, iqr = literal(s["lower"]), literal(s["upper"]), literal(s["iqr"])
        score = f"CASE WHEN {x} < {lower} THEN ({x} - {lower}) ELSE ({x} - {upper}) END / {iqr}"
        return f"{x} < {lower} OR {x} > {upper}", score
    if method == "zscore":
        score = f"({x} - {literal(s['mean'])}) / {literal(s['std'])}"
    elif s["mad"]:
        score = f"{literal(0.6745)} * ({x} - {literal(s['median'])}) / {literal(s['mad'])}"
    else:
        scale = f"({literal(1.253314)} * {literal(s['meanad'])})"
        score = f"({x} - {literal(s['median'])}) / {scale}"
    return f"abs({score}) > {literal(threshold)}", score


def _candidates(name: str, extremes: Extremes) -> pa.Table:
    """The extremes as a table shaped like the Parquet source: file_row_number and the column."""
    columns = [to_arrow(extremes.positions), to_arrow(extremes.values)]
    return pa.Table.from_arrays(columns, names=["file_row_number", name])


def _holds_every_flag(
    con: duckdb.DuckDBPyConnection, view: str, raw: str, extremes: Extremes, where: str
) -> bool:
    """Whether the extremes hold every flagged value: the rule flags neither edge value."""
    edges = f"{raw} IN ({literal(extremes.low)}, {literal(extremes.high)})"
    sql = f"SELECT count(*) FROM {view} WHERE ({edges}) AND ({where})"
    return con.execute(sql).fetchall() == [(0,)]
