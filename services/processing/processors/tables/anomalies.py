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
  (x - upper) / IQR above (> 0). With IQR = 0 both fences are the quartile q1 = q3 and
  every other value is flagged, with score -inf or +inf (what the pandas computation gives).

Nulls (and float NaN) are ignored. A constant column (every value equal) flags nothing, and
its summary says so, as does the summary of a column that cannot be scored: with an
infinite value the mean and std are not finite and every z-score is NaN (scipy's result),
so zscore flags nothing; a NaN score is never flagged. The robust methods score an infinite
value +-inf and flag it, as pandas does, while their centre and scale stay finite.
Differences are taken at a power-of-two scale where they would overflow or lose digits
(values near 1e308, denormals; numeric.value_scale, moments_scale): every finite true
score is computed finite.

The artifact anomalies.csv lists row_number (1-based data row of the dataset), line (the
row's line number in the uploaded file, from the copy's hidden `__line__` column; empty when
the copy has none), column, value (as stored) and score, ordered by row then by column order.
With csv_formula_escape a column name starting with = + - @, tab or CR is written with a
leading ' (output.py).

Centre and scale come from the job's column profiles. Every rule flags the values below
one bound and above another, so a column's flags are looked for among its profiled
extremes (the lowest and highest 2% with their rows) when the rule flags neither edge of
them, and by a scan of the Parquet copy only otherwise. Both give the same rows: the
same SQL rule is evaluated on the same values.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.arrays import to_arrow
from services.processing.processors.base import ArtifactFile, StepInput, StepOutput, artifact_name
from services.processing.processors.columns import (
    LINE_COLUMN,
    is_numeric,
    line_expr,
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
    values_at,
)
from services.processing.processors.numeric import ColumnProfile, Extremes, value_scale
from services.processing.processors.output import (
    CSV_TYPE,
    CsvFormulaEscape,
    escape_formula,
    force_quote,
)
from services.processing.processors.tables.aggregates import Quantiles, aggregate_columns
from services.processing.processors.tables.profiles import numeric_profiles

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
        stats, rules = _statistics(
            con, step, src, selected, profiles, exprs, params.method, threshold, rows
        )
        con.execute(
            "CREATE TEMP TABLE flagged"
            " (row_number BIGINT, col INTEGER, value VARCHAR, score DOUBLE)"
        )
        flagging = Flagging(con, step, src, selected, profiles, raw)
        todo = [i for i, rule in enumerate(rules) if rule is not None]
        batches = batched(todo, scan_width(step))
        for n, batch in enumerate(batches):
            part = 0.4 / len(batches)
            flagging.flag(batch, rules, start=0.5 + n * part, end=0.5 + (n + 1) * part)
        counts = dict(con.execute("SELECT col, count(*) FROM flagged GROUP BY col").fetchall())
        # Column names are the data's text; values are numbers, never escaped.
        escape = escape_formula if params.csv_formula_escape else str
        names = "[" + ", ".join(literal(escape(c.name)) for c in selected) + "]"
        options = "FORMAT csv, HEADER true"
        if params.csv_formula_escape:
            options += force_quote(["column"])
        line, lines = "NULL", ""
        if line_expr(types, step.columns) != "NULL" and counts:
            _register_lines(con, step)
            line, lines = "l.line", " LEFT JOIN flagged_lines l ON l.rn = f.row_number"
        copy = (
            f"COPY (SELECT f.row_number, CAST({line} AS BIGINT) AS line,"
            f" {names}[f.col + 1] AS column, f.value, f.score FROM flagged f{lines}"
            f" ORDER BY f.row_number, f.col) TO {literal(str(path))} ({options})"
        )
        try:
            run_with_progress(con, copy, step.report, f"writing {name}", start=0.9)
        finally:
            if lines:
                con.unregister("flagged_lines")
    columns = {}
    for i, (column, s) in enumerate(zip(selected, stats, strict=True)):
        columns[column.name] = {"count": counts.get(i, 0), **s}
    summary = {
        "method": params.method,
        "threshold": threshold,
        "total": sum(counts.values()),
        "columns": columns,
    }
    artifact = ArtifactFile(name=name, path=path, content_type=CSV_TYPE)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _register_lines(con: duckdb.DuckDBPyConnection, step: StepInput) -> None:
    """The view `flagged_lines` (rn, line): the flagged rows' lines in the uploaded file."""
    # Read from the row groups holding flagged rows: a join on the whole line column would
    # scan and hash every row of the copy.
    found = con.execute("SELECT DISTINCT row_number FROM flagged ORDER BY 1").fetchnumpy()
    rows = np.asarray(found["row_number"], dtype=np.int64)
    message = "finding the lines of the flagged rows"
    lines = values_at(
        step.parquet_path, LINE_COLUMN, rows - 1, tick=lambda: step.report(0.9, message)
    )
    con.register("flagged_lines", pa.table({"rn": to_arrow(rows), "line": lines}))


@dataclass(frozen=True)
class Rule:
    """The SQL of a column's flagged values (`where`) and of their score."""

    where: str
    score: str


CONSTANT = "constant column (every value equal): nothing flagged"
NOT_FINITE = {
    "zscore": "the column holds infinite values: its mean and std are not finite, so every"
    " z-score is NaN (as scipy.stats.zscore gives): nothing flagged",
    "modified_zscore": "the median or the spread around it is not finite (the column holds"
    " infinite values): nothing flagged",
    "iqr": "a quartile or the IQR is not finite (the column holds infinite values):"
    " nothing flagged",
}
IQR_ZERO = (
    "IQR is 0: both fences are at q1 = q3, so every other value is flagged (score -inf or +inf)"
)
MAD_ZERO = "MAD is 0: scored with the mean absolute deviation, (x - median) / (1.253314 * MeanAD)"


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
) -> tuple[list[dict[str, Any]], list[Rule | None]]:
    """Per column: the summary figures (non-null count, the centre/scale of the method, a note
    when nothing can be flagged) and the rule flagging its values (None: nothing to flag)."""
    if method == "zscore":
        pairs = [
            _zscore(x, profiles[c.name], threshold) for c, x in zip(selected, exprs, strict=True)
        ]
    elif method == "iqr":
        pairs = [_iqr(x, profiles[c.name], threshold) for c, x in zip(selected, exprs, strict=True)]
    else:
        pairs = _modified_zscore(con, step, src, selected, profiles, exprs, threshold, rows)
    return [s for s, _ in pairs], [rule for _, rule in pairs]


def _scaled(x: str, scale: float) -> str:
    """The value times a power of two (x itself at scale 1)."""
    return x if scale == 1.0 else f"({x} * {literal(scale)})"


def _constant(profile: ColumnProfile) -> bool:
    return profile.count > 0 and profile.stats.minimum == profile.stats.maximum


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _zscore(x: str, profile: ColumnProfile, threshold: float) -> tuple[dict[str, Any], Rule | None]:
    s: dict[str, Any] = {"non_null": profile.count, "mean": profile.mean, "std": profile.std(0)}
    terms = profile.standardizer()
    if terms is None:
        return s, None
    scale, mean, std = terms
    if _constant(profile) or std == 0:
        s["note"] = CONSTANT
        return s, None
    if not _finite(mean, std):
        s["note"] = NOT_FINITE["zscore"]
        return s, None
    score = f"({_scaled(x, scale)} - {literal(mean)}) / {literal(std)}"
    return s, Rule(f"abs({score}) > {literal(threshold)}", score)


def _iqr(x: str, profile: ColumnProfile, k: float) -> tuple[dict[str, Any], Rule | None]:
    q1, q3 = profile.quantile(0.25), profile.quantile(0.75)
    s: dict[str, Any] = {"non_null": profile.count, "q1": q1, "q3": q3}
    if not profile.count or q1 is None or q3 is None:
        return s, None
    scale = value_scale(profile.stats.minimum, profile.stats.maximum)
    q1s, q3s = q1 * scale, q3 * scale
    iqr = q3s - q1s
    lower, upper = q1s - k * iqr, q3s + k * iqr
    s.update(iqr=iqr / scale, lower=lower / scale, upper=upper / scale)
    if not _finite(q1s, q3s, iqr):
        s["note"] = NOT_FINITE["iqr"]
        return s, None
    if _constant(profile):
        s["note"] = CONSTANT
        return s, None
    if iqr == 0:
        s["note"] = IQR_ZERO
    xs, lo, hi, width = _scaled(x, scale), literal(lower), literal(upper), literal(iqr)
    # An IQR of 0 divides by zero: +-inf, the sign of the side.
    score = f"CASE WHEN {xs} < {lo} THEN ({xs} - {lo}) ELSE ({xs} - {hi}) END / {width}"
    return s, Rule(f"{xs} < {lo} OR {xs} > {hi}", score)


def _modified_zscore(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    selected: list[ColumnInfo],
    profiles: dict[str, ColumnProfile],
    exprs: list[str],
    threshold: float,
    rows: int,
) -> list[tuple[dict[str, Any], Rule | None]]:
    """The median from the profile, MAD and MeanAD from one more pass over the columns."""
    medians, scales = [], []
    for column in selected:
        profile = profiles[column.name]
        scales.append(
            value_scale(profile.stats.minimum, profile.stats.maximum) if profile.count else 1.0
        )
        medians.append(profile.quantile(0.5))
    centres = [None if m is None else m * sc for m, sc in zip(medians, scales, strict=True)]
    deviations = [
        f"abs({_scaled(x, sc)} - {literal(c)})"
        for x, sc, c in zip(exprs, scales, centres, strict=True)
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
    out: list[tuple[dict[str, Any], Rule | None]] = []
    for column, x, scale, median, centre, d in zip(
        selected, exprs, scales, medians, centres, spread, strict=True
    ):
        profile = profiles[column.name]
        mad, meanad = d["mad"], d["meanad"]
        s: dict[str, Any] = {"non_null": profile.count, "median": median}
        s["mad"] = None if mad is None else mad / scale
        if mad == 0:
            s["meanad"] = None if meanad is None else meanad / scale
        if not profile.count or centre is None:
            out.append((s, None))
            continue
        if _constant(profile):
            s["note"] = CONSTANT
            out.append((s, None))
            continue
        divisor = mad / 0.6745 if mad else 1.253314 * (meanad or 0.0)
        if not _finite(centre, mad, divisor) or divisor == 0:
            s["note"] = CONSTANT if divisor == 0 else NOT_FINITE["modified_zscore"]
            out.append((s, None))
            continue
        xs = _scaled(x, scale)
        if mad:
            score = f"{literal(0.6745)} * ({xs} - {literal(centre)}) / {literal(mad)}"
        else:
            s["note"] = MAD_ZERO
            score = f"({xs} - {literal(centre)}) / ({literal(1.253314)} * {literal(meanad)})"
        out.append((s, Rule(f"abs({score}) > {literal(threshold)}", score)))
    return out


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
    ) -> None:
        self.con, self.step, self.src, self.selected = con, step, src, selected
        self.profiles, self.raw = profiles, raw

    def flag(
        self, batch: Sequence[int], rules: list[Rule | None], *, start: float, end: float
    ) -> None:
        con = self.con
        views: list[str] = []  # of extremes, registered on this connection until flagged
        try:
            chosen: dict[int, Rule] = {}
            for i in batch:
                rule = rules[i]
                assert rule is not None, "only columns with a rule are flagged"
                chosen[i] = rule
            sources = {i: self._source(i, chosen[i].where, views) for i in batch}
            scanned = [i for i in batch if sources[i] is None]
            branches = [
                self._branch(i, sources[i] or self.src, chosen[i])
                for i in batch
                if sources[i] is not None or len(scanned) == 1
            ]
            # (the statement, how many columns it flags)
            inserts = [(" UNION ALL ".join(branches), len(branches))] if branches else []
            if len(scanned) > 1:
                inserts += [
                    (self._scan(group, chosen), len(group))
                    for group in batched(scanned, SCAN_GROUP)
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

    def _branch(self, i: int, source: str, rule: Rule) -> str:
        return (
            f"SELECT file_row_number + 1 AS row_number, {i} AS col,"
            f" CAST({self.raw[i]} AS VARCHAR) AS value, {rule.score} AS score"
            f" FROM {source} WHERE {rule.where}"
        )

    def _scan(self, group: Sequence[int], rules: dict[int, Rule]) -> str:
        """One scan of the copy: every flagged value of the group's columns."""
        flags = ", ".join(
            f"CASE WHEN {rules[i].where} THEN {{'col': {i}, 'value':"
            f" CAST({self.raw[i]} AS VARCHAR), 'score': {rules[i].score}}} END"
            for i in group
        )
        where = " OR ".join(f"({rules[i].where})" for i in group)
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
