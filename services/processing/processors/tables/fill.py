"""The fill_nulls stage of normalize: its params, the columns, the value, the SQL that fills."""

from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core.core_schema import ValidationInfo

from schemas.domain.records import ColumnInfo
from services.processing.processors.base import ParamsError, ProcessorInputError, StepInput
from services.processing.processors.columns import (
    is_numeric,
    reject_duplicate_columns,
    select_columns,
    value_expr,
)
from services.processing.processors.duck import literal, run_with_progress
from services.processing.processors.numeric import ColumnProfile
from services.processing.processors.tables.aggregates import Aggregate, Quantiles, aggregate_columns

PARSERS: dict[str, Callable[[str], Any]] = {
    "date": date.fromisoformat,
    "timestamp": datetime.fromisoformat,
    "time": time.fromisoformat,
}
SCALAR_TYPES = {"integer", "float", "decimal", "boolean", "string", "date", "timestamp", "time"}


class FillNulls(BaseModel):
    """Fill nulls with the column mean, median, mode or a constant."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["mean", "median", "mode", "constant"]
    value: str | int | float | bool | None = Field(
        default=None, validate_default=True, description="The fill value (strategy constant)."
    )
    columns: list[str] | None = Field(default=None, min_length=1)
    _unique = field_validator("columns")(reject_duplicate_columns)

    @field_validator("value")
    @classmethod
    def _value_for_constant(cls, value: Any, info: ValidationInfo) -> Any:
        strategy = info.data.get("strategy")
        if strategy == "constant" and value is None:
            raise ValueError("a value is required when strategy is 'constant'")
        if strategy not in (None, "constant") and value is not None:
            raise ValueError("a value is only used when strategy is 'constant'")
        return value


def fits(value: Any, column: ColumnInfo) -> bool:
    """Whether a constant fill value can be stored in the column without guessing."""
    kind = "timestamp" if column.type.startswith("timestamp") else column.type
    if isinstance(value, bool):
        return kind == "boolean"
    if isinstance(value, int):
        return kind in {"integer", "float", "decimal"}
    if isinstance(value, float):
        return kind in {"float", "decimal"} or (kind == "integer" and value.is_integer())
    if kind == "string":
        return True
    if kind in PARSERS:
        try:
            PARSERS[kind](value)
        except ValueError:
            return False
        return True
    return kind not in SCALAR_TYPES  # other DuckDB types: DuckDB casts it (or fails) at run time


def fill_targets(fill: FillNulls, columns: list[ColumnInfo]) -> list[ColumnInfo]:
    """The columns to fill, raising ParamsError for a missing or unsuitable one."""
    field = "fill_nulls.columns"
    if fill.strategy in ("mean", "median"):
        return select_columns(
            fill.columns, columns, field=field, accept=is_numeric, kind="a numeric"
        )
    if fill.strategy == "mode":
        return select_columns(
            fill.columns, columns, field=field, accept=_scalar, kind="a scalar-typed"
        )
    if fill.columns is None:
        targets = [c for c in columns if fits(fill.value, c)]
        if not targets:
            raise ParamsError(
                f"value {fill.value!r} fits no column of the dataset", field="fill_nulls.value"
            )
        return targets
    targets = select_columns(fill.columns, columns, field=field)
    for i, column in enumerate(targets):
        if not fits(fill.value, column):
            raise ParamsError(
                f"value {fill.value!r} cannot be stored in column {column.name!r}"
                f" of type {column.type}",
                field=f"{field}[{i}]",
            )
    return targets


def _scalar(column: ColumnInfo) -> bool:
    return column.type in SCALAR_TYPES or column.type.startswith("timestamp")


def fill_expressions(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    relation: str,
    fill: FillNulls,
    types: dict[str, str],
    rows: int,
    profiles: dict[str, ColumnProfile],
) -> tuple[dict[str, str], dict[str, Any]]:
    """Fill values computed on `relation`: (column -> filling SQL expression, summary).

    `profiles` are statistics of columns of `relation` already known (from the job's cache).
    """
    targets = fill_targets(fill, step.columns)
    numeric = fill.strategy in ("mean", "median")
    exprs = [value_expr(c.name, types[c.name]) for c in targets]
    if numeric:
        exprs = [f"CAST({e} AS DOUBLE)" for e in exprs]
    aggregates: dict[str, Aggregate] = {"nulls": "count(*) - count({e})"}
    if numeric:
        aggregates["value"] = "avg({e})" if fill.strategy == "mean" else Quantiles(0.5)
    known = {c.name: profiles[c.name] for c in targets if numeric and c.name in profiles}
    scan = [i for i, c in enumerate(targets) if c.name not in known]
    scanned = aggregate_columns(
        con, relation, [exprs[i] for i in scan], aggregates, step, rows, start=0.2, end=0.3
    )
    stats = [
        _profiled(known[c.name], fill.strategy, rows) if c.name in known else {} for c in targets
    ]
    for i, s in zip(scan, scanned, strict=True):
        stats[i] = s
    filled: dict[str, str] = {}
    summary: dict[str, Any] = {}
    for i, (column, expr, s) in enumerate(zip(targets, exprs, stats, strict=True)):
        if fill.strategy == "constant":
            value = fill.value
        elif fill.strategy == "mode":
            span = (0.3 + 0.05 * i / len(targets), 0.3 + 0.05 * (i + 1) / len(targets))
            value = _mode(con, step, relation, expr, column.name, span)
        else:
            value = s["value"]
        if numeric:
            filled[column.name] = expr if value is None else f"coalesce({expr}, {literal(value)})"
        elif value is not None:
            typed = f"CAST({literal(value)} AS {types[column.name]})"
            _check_cast(con, typed, column.name)
            filled[column.name] = f"coalesce({expr}, {typed})"
        summary[column.name] = {
            "count": s["nulls"] if value is not None else 0,
            "value": _json_value(value),
        }
    return filled, summary


def _json_value(value: Any) -> Any:
    """The value for a JSON summary: an integer past 64 bits as its digits, which every JSON
    reader takes exactly (many refuse or round such a number)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


def _profiled(profile: ColumnProfile, strategy: str, rows: int) -> dict[str, Any]:
    value = profile.mean if strategy == "mean" else profile.quantile(0.5)
    return {"nulls": rows - profile.count, "value": value}


def _mode(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    relation: str,
    expr: str,
    name: str,
    span: tuple[float, float],
) -> Any:
    sql = (
        f"SELECT {expr} FROM {relation} WHERE {expr} IS NOT NULL"
        " GROUP BY 1 ORDER BY count(*) DESC, 1 ASC LIMIT 1"
    )
    result = run_with_progress(
        con, sql, step.report, f"finding the mode of {name}", start=span[0], end=span[1]
    )
    return result[0][0] if result else None


def _check_cast(con: duckdb.DuckDBPyConnection, typed: str, name: str) -> None:
    try:
        con.execute(f"SELECT {typed}").fetchall()
    except (duckdb.ConversionException, duckdb.OutOfRangeException) as exc:
        raise ProcessorInputError(
            f"fill value does not fit column {name!r}: {str(exc).splitlines()[0]}", column=name
        ) from exc
