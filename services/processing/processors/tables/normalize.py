"""normalize: drop duplicate rows, fill nulls, scale numeric columns; write the result.

Stages run in this order, each computing its statistics on the output of the one before:

- drop_duplicates: true (all columns) or {subset}; keeps the first occurrence, as
  pandas drop_duplicates(keep="first"); nulls compare equal.
- fill_nulls: mean | median (numeric columns; default all numeric) or mode | constant
  (default every column the value fits). mode ties go to the smallest value, as
  pandas .mode()[0]. A mean/median-filled column is written as DOUBLE, also when it
  was an integer column (a mean is rarely an integer; the type does not depend on the
  data). constant `value` must fit the column type: an int for integer columns, a
  number for float/decimal, a bool for boolean, a string for string columns, an ISO
  string for date/timestamp/time.
- scale (numeric columns, default all numeric; written as DOUBLE): minmax (x - min) /
  (max - min); zscore (x - mean) / std with ddof=0 (sklearn StandardScaler); robust
  (x - median) / IQR with linear quartiles 25-75 (sklearn RobustScaler). A constant
  column (std 0 included) becomes 0.0; for robust an IQR of 0 is replaced by 1, as sklearn
  does. Where max - min or x - centre would overflow, or squares underflow (values near
  1e308, denormals), the statistics and the scaled values are computed on the values times
  a power of two (numeric.value_scale, moments_scale): exact, so a finite true result is
  written finite. A column holding +-inf has no finite min/max or mean/std: minmax and zscore
  leave it unscaled, with a note in its summary (sklearn refuses such input); robust scales
  it when its quartiles are finite (an infinite value stays infinite).

Float NaN counts as null. Row order is the dataset's. The artifact normalized.<ext> is
written in `output_format`: csv, parquet, json (one JSON array) or ndjson (one object
per line); the default is the dataset's own format. It holds the dataset's columns only (the
copy's hidden `__line__` is not one). CSV and JSON cells are written as output.text_cells
documents: ISO 8601 timestamps (zone-aware ones in UTC, +00:00), true/false, numbers in the
shortest form that reads back to the same value; in JSON, NaN and +-inf as null and decimals
as strings. A dataset without rows gives a CSV of the header, a Parquet file of the schema,
`[]` (json) or an empty file (ndjson): JSON names columns only in rows. With
csv_formula_escape, a CSV output's text cells and header names starting with = + - @, tab or
CR get a leading ' and its text columns are quoted (OWASP; output.py); numeric columns are
written unchanged.
"""

import math
from typing import Annotated, Any, Literal

import duckdb
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import ArtifactFile, StepInput, StepOutput, artifact_name
from services.processing.processors.columns import (
    is_numeric,
    quote,
    reject_duplicate_columns,
    select_columns,
    value_expr,
)
from services.processing.processors.duck import (
    connect,
    literal,
    parquet_source,
    parquet_types,
    parse_size,
    planned_wide,
    run_with_progress,
    scan_width,
)
from services.processing.processors.numeric import ColumnProfile, moments_scale, value_scale
from services.processing.processors.output import (
    CSV_TYPE,
    PARQUET_TYPE,
    TEXT_TYPES,
    CsvFormulaEscape,
    copy_to_file,
    escape_formula,
    escaped_cells,
    force_quote,
    text_cells,
)
from services.processing.processors.tables.aggregates import Aggregate, Quantiles, aggregate_columns
from services.processing.processors.tables.fill import FillNulls, fill_expressions, fill_targets
from services.processing.processors.tables.groups import equal_rows
from services.processing.processors.tables.profiles import numeric_profiles

FORMATS = {
    "csv": (CSV_TYPE, "FORMAT csv, HEADER true"),
    "parquet": (PARQUET_TYPE, "FORMAT parquet, COMPRESSION zstd"),
    "json": ("application/json", "FORMAT json, ARRAY true"),
    "ndjson": ("application/x-ndjson", "FORMAT json"),
}


class DropDuplicates(BaseModel):
    """Drop rows equal to an earlier row (over `subset`, default all columns)."""

    model_config = ConfigDict(extra="forbid")
    subset: list[str] | None = Field(
        default=None, min_length=1, description="Columns that define a duplicate (default: all)."
    )
    _unique = field_validator("subset")(reject_duplicate_columns)


class Scale(BaseModel):
    """Scale numeric columns: minmax, zscore (ddof=0) or robust (median/IQR)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["minmax", "zscore", "robust"]
    columns: list[str] | None = Field(default=None, min_length=1)
    _unique = field_validator("columns")(reject_duplicate_columns)


def _duplicates_option(value: Any) -> Any:
    # `true` means every column, `false` nothing; the object form names a subset.
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if not isinstance(value, dict | DropDuplicates):
        raise ValueError("must be true, false or an object {subset: [column, ...]}")
    return value


class NormalizeParams(BaseModel):
    """Deduplicate, fill nulls and scale, then write the dataset."""

    model_config = ConfigDict(extra="forbid", title="normalize")
    drop_duplicates: Annotated[
        DropDuplicates | None,
        BeforeValidator(_duplicates_option, json_schema_input_type=bool | DropDuplicates),
        Field(description="true: rows equal in every column; {subset}: equal in those columns."),
    ] = None
    fill_nulls: FillNulls | None = None
    scale: Scale | None = None
    output_format: Literal["csv", "parquet", "json", "ndjson"] | None = Field(
        default=None, description="Default: the dataset's format."
    )
    csv_formula_escape: CsvFormulaEscape = False


def check_columns(params: NormalizeParams, columns: list[ColumnInfo]) -> None:
    """Every named column must exist and suit its stage; a constant must fit its columns."""
    if params.drop_duplicates is not None:
        select_columns(params.drop_duplicates.subset, columns, field="drop_duplicates.subset")
    if params.fill_nulls is not None:
        fill_targets(params.fill_nulls, columns)
    if params.scale is not None:
        select_columns(
            params.scale.columns,
            columns,
            field="scale.columns",
            accept=is_numeric,
            kind="a numeric",
        )


def run(step: StepInput, params: NormalizeParams) -> StepOutput:
    """Apply the stages in order and write normalized.<format> in the dataset's row order."""
    fmt = params.output_format or step.dataset_format.value
    content_type, options = FORMATS[fmt]
    if fmt == "parquet":
        options += _row_groups(step, len(step.columns))
    name = artifact_name(f"normalized.{fmt}", step.artifact_suffix)
    path = step.output_dir / name
    src = parquet_source(step.parquet_path, row_numbers=True)
    with connect(step) as con:
        types = parquet_types(con, step.parquet_path)
        counted = con.execute(f"SELECT count(*) FROM {src}").fetchone()  # from metadata
        assert counted is not None  # an aggregate without GROUP BY returns one row
        rows_in = counted[0]
        relation, rows_out = src, rows_in
        if params.drop_duplicates is not None:
            relation, rows_out = _drop_duplicates(con, step, src, params.drop_duplicates, types)
        # Statistics of the whole copy hold unless duplicates were dropped.
        profiles = {} if relation != src else _profiles(con, step, src, params, types, rows_in)
        exprs = {c.name: quote(c.name) for c in step.columns}
        filled: dict[str, Any] = {}
        if params.fill_nulls is not None:
            fill_exprs, filled = fill_expressions(
                con, step, relation, params.fill_nulls, types, rows_out, profiles
            )
            exprs.update(fill_exprs)
        scaled: dict[str, Any] = {}
        if params.scale is not None:
            scale_exprs, scaled = _scale(
                con, step, relation, params.scale, exprs, types, rows_out, profiles, filled
            )
            exprs.update(scale_exprs)
        names = {column: column for column in exprs}
        if fmt == "csv" and params.csv_formula_escape:
            names = {column: escape_formula(column) for column in exprs}
            exprs = {column: escaped_cells(expr, types[column]) for column, expr in exprs.items()}
            options += force_quote([names[c] for c in exprs if types[c] in TEXT_TYPES])
        if fmt != "parquet":
            # Filled with a mean or median, or scaled: DOUBLE; else the column's own type.
            doubles = set(scaled) | (set(filled) if _numeric_fill(params) else set())
            # Min-max and z-scores of finite values are finite (NaN is null by then).
            finite = {
                c
                for c, s in scaled.items()
                if params.scale is not None and params.scale.method != "robust" and "note" not in s
            }
            exprs = {
                column: text_cells(
                    expr,
                    "DOUBLE" if column in doubles else types[column],
                    fmt,
                    finite=column in finite,
                )
                for column, expr in exprs.items()
            }
        select = ", ".join(f"{expr} AS {quote(names[column])}" for column, expr in exprs.items())
        # Scans keep the file order (preserve_insertion_order); a join may not.
        order = " ORDER BY file_row_number" if relation != src else ""
        query = f"SELECT {select} FROM {relation}{order}"
        with planned_wide(con, len(exprs)):
            sha256 = copy_to_file(
                con, query, path, options, step, f"writing {name}", start=0.4, columns=len(exprs)
            )
    summary = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_dropped": rows_in - rows_out,
        "fill_strategy": params.fill_nulls.strategy if params.fill_nulls else None,
        "filled": filled,
        "scale_method": params.scale.method if params.scale else None,
        "scaled": scaled,
        "output_format": fmt,
    }
    artifact = ArtifactFile(name=name, path=path, content_type=content_type, sha256=sha256)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _numeric_fill(params: NormalizeParams) -> bool:
    return params.fill_nulls is not None and params.fill_nulls.strategy in ("mean", "median")


# DuckDB's Parquet writer holds a row group of every column before writing it (122,880 rows by
# default): 1,000 columns of doubles make ~1 GB. Wider outputs get smaller row groups, a
# quarter of DuckDB's limit at most (and at least 2,048 rows); narrower ones are unchanged.
DEFAULT_ROW_GROUP = 122_880
MIN_ROW_GROUP = 2_048


def _row_groups(step: StepInput, columns: int) -> str:
    """The COPY option bounding the output's row groups, or "" (DuckDB's default)."""
    rows = parse_size(step.limits.memory_limit) // 4 // (8 * max(columns, 1))
    if rows >= DEFAULT_ROW_GROUP:
        return ""
    return f", ROW_GROUP_SIZE {max(MIN_ROW_GROUP, rows // MIN_ROW_GROUP * MIN_ROW_GROUP)}"


def _drop_duplicates(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    option: DropDuplicates,
    types: dict[str, str],
) -> tuple[str, int]:
    """Keep the first row of every group of equal rows: (the kept relation, its row count)."""
    subset = option.subset or [c.name for c in step.columns]
    if len(subset) > scan_width(step):
        return _drop_duplicates_wide(con, step, src, [value_expr(n, types[n]) for n in subset])
    keys = ", ".join(value_expr(name, types[name]) for name in subset)
    sql = (
        "CREATE TEMP TABLE normalize_keep AS SELECT min(file_row_number) AS rn"
        f" FROM {src} GROUP BY {keys}"
    )
    run_with_progress(con, sql, step.report, "finding duplicate rows", end=0.2)
    counted = con.execute("SELECT count(*) FROM normalize_keep").fetchone()
    assert counted is not None  # an aggregate without GROUP BY returns one row
    rows_out = counted[0]
    return (
        f"(SELECT * FROM {src} WHERE file_row_number IN (SELECT rn FROM normalize_keep))",
        rows_out,
    )


def _drop_duplicates_wide(
    con: duckdb.DuckDBPyConnection, step: StepInput, src: str, keys: list[str]
) -> tuple[str, int]:
    """_drop_duplicates over more columns than one query reads: rows grouped a batch of
    columns at a time, and every row of a group but its first dropped."""
    table = equal_rows(
        con, step, src, keys, "normalize_equal", message="finding duplicate rows", end=0.2
    )
    con.execute(f"CREATE TEMP TABLE normalize_drop AS SELECT rn FROM {table} WHERE rn <> g")
    con.execute(f"DROP TABLE {table}")
    counted = con.execute(
        f"SELECT (SELECT count(*) FROM {src}) - (SELECT count(*) FROM normalize_drop)"
    ).fetchone()
    assert counted is not None  # a SELECT without FROM returns one row
    return (
        f"(SELECT * FROM {src} WHERE file_row_number NOT IN (SELECT rn FROM normalize_drop))",
        counted[0],
    )


def _profiles(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    params: NormalizeParams,
    types: dict[str, str],
    rows: int,
) -> dict[str, ColumnProfile]:
    """Column profiles for the fill and scale statistics: those a job step already made, and
    all of them when a median or quartiles are needed (one sort beats DuckDB's quantile)."""
    names: set[str] = set()
    fill, scale = params.fill_nulls, params.scale
    if fill is not None and fill.strategy in ("mean", "median"):
        names.update(c.name for c in fill_targets(fill, step.columns))
    if scale is not None:
        names.update(
            c.name
            for c in select_columns(
                scale.columns, step.columns, field="scale.columns", accept=is_numeric
            )
        )
    wanted = [c for c in step.columns if c.name in names]
    if (fill is not None and fill.strategy == "median") or (
        scale is not None and scale.method == "robust"
    ):
        return numeric_profiles(con, step, src, wanted, types, rows, end=0.2)
    return {c.name: profile for c in wanted if (profile := step.profiles.get(c.name))}


def _scale(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    relation: str,
    scale: Scale,
    exprs: dict[str, str],
    types: dict[str, str],
    rows: int,
    profiles: dict[str, ColumnProfile],
    filled: dict[str, Any],
) -> tuple[dict[str, str], dict[str, Any]]:
    """Scaling statistics of the (filled) relation: (column -> SQL, summary)."""
    targets = select_columns(scale.columns, step.columns, field="scale.columns", accept=is_numeric)
    # A column that was not filled: read NaN as null, or min/max would be NaN.
    current = {
        c.name: value_expr(c.name, types[c.name])
        if exprs[c.name] == quote(c.name)
        else exprs[c.name]
        for c in targets
    }
    xs = [f"CAST({current[c.name]} AS DOUBLE)" for c in targets]
    ends: dict[str, Aggregate] = {"min": "min({e})", "max": "max({e})"}
    by_method: dict[str, dict[str, Aggregate]] = {
        "minmax": ends,
        "zscore": {"mean": "avg({e})", "std": "stddev_pop({e})", **ends},
        "robust": {"quartiles": Quantiles((0.25, 0.5, 0.75)), **ends},
    }
    aggregates = by_method[scale.method]
    known = {
        c.name: s
        for c in targets
        if c.name in profiles
        and (s := _profiled(scale.method, profiles[c.name], filled.get(c.name)))
    }
    scan = [i for i, c in enumerate(targets) if c.name not in known]
    scanned = aggregate_columns(
        con, relation, [xs[i] for i in scan], aggregates, step, rows, start=0.35, end=0.38
    )
    stats = [known.get(c.name, {}) for c in targets]
    for i, s in zip(scan, scanned, strict=True):
        stats[i] = s
    if scale.method == "zscore":
        _standardize(con, step, relation, xs, stats, rows)
    out: dict[str, str] = {}
    summary: dict[str, Any] = {}
    for column, x, s in zip(targets, xs, stats, strict=True):
        out[column.name] = _scaled_expr(scale.method, x, s)
        s.pop("_terms", None)
        summary[column.name] = s
    return out, summary


def _standardize(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    relation: str,
    xs: list[str],
    stats: list[dict[str, Any]],
    rows: int,
) -> None:
    """Add each column's z-score terms (s, m, d) of (x * s - m) / d to its stats, the mean and
    std taken again at a power-of-two scale where DuckDB's sums overflowed or underflowed."""
    again: list[int] = []
    for i, s in enumerate(stats):
        if "_terms" in s or s["mean"] is None:
            continue
        std = s["std"]
        variance = std * std if std is not None and math.isfinite(std) else math.inf
        factor = moments_scale(s["min"], s["max"], s["mean"], variance)
        s["_terms"] = (factor, s["mean"], std)
        if factor != 1.0:
            again.append(i)
    exprs = [f"({xs[i]} * {literal(stats[i]['_terms'][0])})" for i in again]
    scaled = aggregate_columns(
        con,
        relation,
        exprs,
        {"mean": "avg({e})", "std": "stddev_pop({e})"},
        step,
        rows,
        start=0.38,
        end=0.4,
    )
    for i, moments in zip(again, scaled, strict=True):
        factor = stats[i]["_terms"][0]
        stats[i]["_terms"] = (factor, moments["mean"], moments["std"])
        stats[i].update(mean=moments["mean"] / factor, std=moments["std"] / factor)


NOT_SCALED = "not scaled: its {} not finite (the column holds infinite values)"


def _scaled_expr(method: str, x: str, s: dict[str, Any]) -> str:
    """The SQL of a scaled column from its statistics; the column itself when it cannot be
    scaled (no values, or statistics that are not finite: a note in `s` says which)."""
    low, high = s.get("min"), s.get("max")
    if method == "robust":
        q1, median, q3 = s.pop("quartiles") or (None, None, None)
        iqr = None if q1 is None else q3 - q1
        s.update(median=median, q1=q1, q3=q3, iqr=iqr, scale=iqr or 1.0)
        if low is None or high is None or q1 is None or median is None or q3 is None:
            return x  # no values at all
        if not (math.isfinite(q1) and math.isfinite(median) and math.isfinite(q3)):
            s["note"] = NOT_SCALED.format("quartiles are")
            return x
        factor = value_scale(low, high)
        # sklearn's IQR of 0 replaced by 1: at scale `factor`, the divisor is the factor.
        centre, divisor = median * factor, (q3 * factor - q1 * factor) or factor
    elif low is None or high is None:  # no values at all
        return x
    elif not (math.isfinite(low) and math.isfinite(high)):
        which = "minimum and maximum are" if method == "minmax" else "mean and std are"
        s["note"] = NOT_SCALED.format(which)
        return x
    elif low == high:
        return f"({x} - {literal(low)})"  # constant: exactly 0.0
    elif method == "minmax":
        factor = value_scale(low, high)
        centre, divisor = low * factor, high * factor - low * factor
    else:
        factor, centre, divisor = s["_terms"]
        if not divisor:  # std 0: a constant column
            return f"({x} - {literal(low)})"
    scaled = x if factor == 1.0 else f"({x} * {literal(factor)})"
    return f"({scaled} - {literal(centre)}) / {literal(divisor)}"


def _profiled(
    method: str, profile: ColumnProfile, fill: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Scaling statistics from the profile of the unfilled column, where they still hold.

    Filling nulls with v leaves min and max as min(min, v) and max(max, v); the mean,
    standard deviation and quartiles of a filled column differ, so they are scanned.
    """
    value = fill["value"] if fill and fill["count"] else None
    if profile.count == 0 or (value is not None and method != "minmax"):
        return None
    low, high = float(profile.stats.minimum), float(profile.stats.maximum)
    if value is not None:
        low, high = min(low, float(value)), max(high, float(value))
    if method == "robust":
        quartiles = [profile.quantile(q) for q in (0.25, 0.5, 0.75)]
        return {"quartiles": quartiles, "min": low, "max": high}
    if method == "minmax":
        return {"min": low, "max": high}
    return {
        "mean": profile.mean,
        "std": profile.std(ddof=0),
        "min": low,
        "max": high,
        "_terms": profile.standardizer(),
    }
