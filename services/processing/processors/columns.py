"""Column kinds and the checks that params name existing columns of the right kind."""

from collections.abc import Callable, Sequence

from schemas.domain.records import ColumnInfo
from services.processing.processors.base import ParamsError

NUMERIC_TYPES = frozenset({"integer", "float", "decimal"})
TEMPORAL_TYPES = frozenset({"date", "timestamp", "time"})
FLOAT_DUCK_TYPES = frozenset({"FLOAT", "DOUBLE"})


def is_numeric(column: ColumnInfo) -> bool:
    """Integer, float or decimal."""
    return column.type in NUMERIC_TYPES


def is_temporal(column: ColumnInfo) -> bool:
    """Date, time or timestamp (with or without a time zone)."""
    return column.type in TEMPORAL_TYPES or column.type.startswith("timestamp")


def quote(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


# The typed copy's hidden column holding each row's line number in the uploaded file (not one
# of the dataset's columns; copies made before it existed lack it).
LINE_COLUMN = "__line__"


def line_expr(types: dict[str, str], columns: Sequence[ColumnInfo]) -> str:
    """SQL for a row's line in the uploaded file: the copy's hidden column, or NULL."""
    if LINE_COLUMN in types and all(c.name != LINE_COLUMN for c in columns):
        return quote(LINE_COLUMN)
    return "NULL"


def value_expr(name: str, duck_type: str) -> str:
    """The column as an SQL expression where a float NaN is NULL, as pandas sees it."""
    if duck_type not in FLOAT_DUCK_TYPES:
        return quote(name)
    # Not nullif(x, 'NaN'): DuckDB folds it away when Parquet statistics exclude NaN.
    return f"CASE WHEN isnan({quote(name)}) THEN NULL ELSE {quote(name)} END"


def select_columns(
    names: Sequence[str] | None,
    columns: list[ColumnInfo],
    *,
    field: str,
    accept: Callable[[ColumnInfo], bool] | None = None,
    kind: str = "",
) -> list[ColumnInfo]:
    """Resolve requested names (None: every accepted column), raising ParamsError per bad entry."""
    if names is None:
        return [c for c in columns if accept is None or accept(c)]
    by_name = {c.name: c for c in columns}
    selected: list[ColumnInfo] = []
    for i, name in enumerate(names):
        column = by_name.get(name)
        if column is None:
            raise ParamsError(f"column {name!r} is not in the dataset", field=f"{field}[{i}]")
        if accept is not None and not accept(column):
            raise ParamsError(
                f"column {name!r} has type {column.type}; {kind} column required",
                field=f"{field}[{i}]",
            )
        selected.append(column)
    return selected


def reject_duplicate_columns(names: list[str] | None) -> list[str] | None:
    """Pydantic validator body: the names unchanged, or ValueError for a column listed twice."""
    if names is not None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"column {name!r} is listed twice")
            seen.add(name)
    return names
