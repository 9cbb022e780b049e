"""What the event-count processors share: column checks, periods as integers, SQL pieces.

An event is a row whose timestamp column is not null. Periods are numbered from the Unix
epoch so that counting groups by one integer and labels are computed once per period:

- hour: whole hours since 1970-01-01 00:00; labelled by the hour's start (TIMESTAMP).
- day: days since 1970-01-01; labelled by the date.
- week: ISO weeks, Monday to Sunday (DuckDB's date_trunc('week')), numbered from Monday
  1970-01-05; labelled by the Monday's date.
- month: year * 12 + month - 1; labelled by the first day of the month.
- year: the year; labelled by its number.

A TIMESTAMP WITH TIME ZONE is counted in UTC; a DATE is midnight of that day.

Only light modules are imported here (no numpy, scipy, statsmodels): the API process loads the
params models and their checks.
"""

from datetime import date, datetime, timedelta
from typing import Literal

import duckdb

from schemas.domain.records import ColumnInfo
from services.processing.processors.base import ParamsError
from services.processing.processors.columns import is_numeric, quote, value_expr

# Baseline models of count_anomalies, coded as the arrays of events/anomaly_stats.py hold them.
NO_BASELINE, POISSON, NEGATIVE_BINOMIAL = 0, 1, 2
MODEL_NAMES = {NO_BASELINE: None, POISSON: "poisson", NEGATIVE_BINOMIAL: "negative_binomial"}
PeriodUnit = Literal["hour", "day", "week", "month", "year"]
EPOCH_DAY = date(1970, 1, 1)
EPOCH_MONDAY = date(1970, 1, 5)  # the first Monday after the epoch: week 0 starts here
EPOCH_HOUR = datetime(1970, 1, 1)
# Column types that can key a series (nested types cannot).
GROUP_TYPES = frozenset(
    {"string", "integer", "boolean", "date", "timestamp", "time", "decimal", "float"}
)


def find_column(name: str, columns: list[ColumnInfo], field: str) -> ColumnInfo:
    """The dataset column of that name, or ParamsError naming the field."""
    for column in columns:
        if column.name == name:
            return column
    raise ParamsError(f"column {name!r} is not in the dataset", field=field)


def check_timestamp(
    name: str, columns: list[ColumnInfo], *, field: str = "timestamp_column", dates: bool = True
) -> ColumnInfo:
    """A timestamp column (or a date column when `dates`)."""
    column = find_column(name, columns, field)
    accepted = column.type == "timestamp" or (dates and column.type == "date")
    if not accepted:
        kind = "a timestamp or date" if dates else "a timestamp"
        raise ParamsError(
            f"column {name!r} has type {column.type}; {kind} column required", field=field
        )
    return column


def check_group(
    name: str, columns: list[ColumnInfo], *, field: str = "group_column", reserved: set[str]
) -> ColumnInfo:
    """A column that can key a series and is not named like an output column."""
    column = find_column(name, columns, field)
    if column.type not in GROUP_TYPES:
        raise ParamsError(
            f"column {name!r} has type {column.type}; a scalar column is required", field=field
        )
    if name in reserved:
        raise ParamsError(
            f"column {name!r} has the name of an output column ({', '.join(sorted(reserved))})",
            field=field,
        )
    return column


def check_numeric(name: str, columns: list[ColumnInfo], *, field: str) -> ColumnInfo:
    """A numeric column."""
    column = find_column(name, columns, field)
    if not is_numeric(column):
        raise ParamsError(
            f"column {name!r} has type {column.type}; a numeric column required", field=field
        )
    return column


def timestamp_expr(name: str, duck_type: str) -> str:
    """The column as a TIMESTAMP or DATE expression (a time-zone-aware one in UTC)."""
    if duck_type.upper() == "TIMESTAMP WITH TIME ZONE":
        return f"timezone('UTC', {quote(name)})"
    return quote(name)


def group_expr(name: str, duck_type: str) -> str:
    """The group column as a key: a float NaN is null, as pandas sees it."""
    return value_expr(name, duck_type)


def period_index_sql(unit: PeriodUnit, ts: str) -> str:
    """The period number of a timestamp expression (see the module docstring)."""
    if unit == "hour":
        return f"date_diff('hour', TIMESTAMP '1970-01-01', date_trunc('hour', {ts}))"
    if unit == "day":
        return f"(CAST({ts} AS DATE) - DATE '1970-01-01')"
    if unit == "week":
        # An exact multiple of 7 days: integer division has nothing to round.
        return f"((CAST(date_trunc('week', {ts}) AS DATE) - DATE '1970-01-05') // 7)"
    if unit == "month":
        return f"(year({ts}) * 12 + month({ts}) - 1)"
    return f"year({ts})"


def period_label_sql(unit: PeriodUnit, index: str) -> str:
    """The label of a period number: its first day (DATE), hour (TIMESTAMP) or year."""
    if unit == "hour":
        return f"(TIMESTAMP '1970-01-01' + to_hours(CAST({index} AS BIGINT)))"
    if unit == "day":
        return f"(DATE '1970-01-01' + CAST({index} AS INTEGER))"
    if unit == "week":
        return f"(DATE '1970-01-05' + CAST(7 * ({index}) AS INTEGER))"
    if unit == "month":
        return f"make_date(CAST(({index}) // 12 AS BIGINT), CAST(({index}) % 12 + 1 AS BIGINT), 1)"
    return f"CAST({index} AS BIGINT)"


def last_day(unit: PeriodUnit, index: int) -> date:
    """The last day of a day, week, month or year period."""
    if unit == "day":
        return EPOCH_DAY + timedelta(days=index)
    if unit == "week":
        return EPOCH_MONDAY + timedelta(weeks=index, days=6)
    if unit == "month":
        year, month = divmod(index + 1, 12)
        return date(year, month + 1, 1) - timedelta(days=1)
    if unit == "year":
        return date(index, 12, 31)
    raise ValueError(f"a {unit} is not made of days")


def ends_early(
    con: duckdb.DuckDBPyConnection, src: str, ts: str, unit: PeriodUnit, index: int
) -> bool:
    """Whether the data end before the last day of period `index` (before its last minute for
    an hour): then it is partial, and its count would read as a drop."""
    if unit == "hour":
        row = con.execute(f"SELECT max(CAST({ts} AS TIMESTAMP)) FROM {src}").fetchone()
        start = period_label(unit, index)
        assert isinstance(start, datetime)
        return row is not None and row[0] < start + timedelta(minutes=59)
    row = con.execute(f"SELECT max(CAST({ts} AS DATE)) FROM {src}").fetchone()
    return row is not None and row[0] < last_day(unit, index)


def period_label(unit: PeriodUnit, index: int) -> date | datetime | int:
    """period_label_sql in Python."""
    if unit == "hour":
        return EPOCH_HOUR + timedelta(hours=index)
    if unit == "day":
        return EPOCH_DAY + timedelta(days=index)
    if unit == "week":
        return EPOCH_MONDAY + timedelta(weeks=index)
    if unit == "month":
        return date(index // 12, index % 12 + 1, 1)
    return index
