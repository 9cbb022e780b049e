"""count_comparison: events in the latest complete month (or year) against the same period of
earlier years, per group.

Events are rows whose timestamp is not null (a time-zone-aware one in UTC). The data span from
the first event's day to the last event's day; a period is complete when the span covers it,
from its first day to its last. The latest complete period is the last one the data cover
completely: the month (or year) of the last event when the data reach its last day, otherwise
the one before. It is compared with the same month (or the year) of each earlier year the
data cover completely, going back until one is not.

Per group (null is a group: the events without one; without a group column, all events), and
in total: the count of each compared period, `change` = latest count - that count and
`percent_change` = 100 * change / that count (null when it is 0). A group appears when it has
events in one of the compared periods; its periods without events count 0.

Artifact count_comparison.csv: the group column (when given), `period` ("2025" or "2025-03"),
`count`, `change`, `percent_change`; for each group the latest period first (its change
empty), then the earlier ones, most recent first. Groups ordered by value, null last.
"""

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import ArtifactFile, StepInput, StepOutput, artifact_name
from services.processing.processors.columns import quote
from services.processing.processors.duck import (
    connect,
    literal,
    parquet_source,
    parquet_types,
    run_with_progress,
)
from services.processing.processors.events.common import (
    check_group,
    check_timestamp,
    group_expr,
    last_day,
    period_index_sql,
    period_label_sql,
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

ARTIFACT = "count_comparison.csv"
OUTPUT_COLUMNS = {"period", "count", "change", "percent_change"}
MAX_GROUPS = 100  # groups detailed in the summary


class CountComparisonParams(BaseModel):
    """Compare the latest complete month or year with the same period of earlier years."""

    model_config = ConfigDict(extra="forbid", title="count_comparison")
    timestamp_column: str = Field(description="Timestamp or date of each event (row).")
    group_column: str | None = Field(default=None, description="Compare per group too.")
    period: Literal["year", "month"] = Field(
        default="month",
        description="month: the latest complete month against that month of earlier years.",
    )
    csv_formula_escape: CsvFormulaEscape = False


def check_columns(params: CountComparisonParams, columns: list[ColumnInfo]) -> None:
    """A timestamp or date column and a scalar group column."""
    check_timestamp(params.timestamp_column, columns)
    if params.group_column is not None:
        check_group(params.group_column, columns, reserved=OUTPUT_COLUMNS)


def run(step: StepInput, params: CountComparisonParams) -> StepOutput:
    """Find the latest complete period, count it and its earlier counterparts, write the table."""
    check_columns(params, step.columns)
    src = parquet_source(step.parquet_path)
    unit = params.period
    every = 12 if unit == "month" else 1  # period numbers from one year to the next
    step.report(0.0, "finding the data's span")
    with connect(step) as con:
        types = parquet_types(con, step.parquet_path)
        ts = timestamp_expr(params.timestamp_column, types[params.timestamp_column])
        grouped = params.group_column is not None
        group = params.group_column or ""
        (row,) = run_with_progress(
            con,
            f"SELECT min(CAST({ts} AS DATE)), max(CAST({ts} AS DATE)),"
            f" max({period_index_sql(unit, ts)}) FROM {src} WHERE {ts} IS NOT NULL",
            step.report,
            "finding the data's span",
            end=0.05,
        )
        periods: list[int] = []
        if row[0] is not None:
            first_day, last_event, latest = row[0], row[1], int(row[2])
            if last_event < last_day(unit, latest):
                latest -= 1
            while _first_day(unit, latest - every * len(periods)) >= first_day:
                periods.append(latest - every * len(periods))
        g = f"{group_expr(group, types[group])} AS g, " if grouped else ""
        listed = ", ".join(map(str, periods)) or "NULL"
        run_with_progress(
            con,
            f"CREATE TEMP TABLE cmp AS SELECT {g}{period_index_sql(unit, ts)} AS p,"
            f" count(*) AS n FROM {src} WHERE {ts} IS NOT NULL"
            f" AND {period_index_sql(unit, ts)} IN ({listed}) GROUP BY ALL",
            step.report,
            "counting events per period",
            start=0.05,
            end=0.8,
        )
        if not grouped:
            con.execute("ALTER TABLE cmp ADD COLUMN g INTEGER")
        query = _comparison(unit, periods)
        rows = con.execute(query).fetchall()
        name = artifact_name(ARTIFACT, step.artifact_suffix)
        path = step.output_dir / name
        escape = params.csv_formula_escape
        key = ""
        if grouped:
            duck_type = types[group]
            shown = escape_formula(group) if escape else group
            cells = escaped_cells("g", duck_type) if escape else "g"
            key = f"{cells} AS {quote(shown)}, "
        options = "FORMAT csv, HEADER true"
        if escape and grouped and types[group] in TEXT_TYPES:
            options += force_quote([escape_formula(group)])
        sha = copy_to_file(
            con,
            f"SELECT {key}period, count, change, percent_change FROM ({query})",
            path,
            options,
            step,
            f"writing {name}",
            start=0.85,
        )
    labels = [_label(unit, p) for p in periods]
    summary: dict[str, Any] = {
        "period": unit,
        "latest_period": labels[0] if labels else None,
        "compared_periods": labels[1:],
        "first_day": row[0],
        "last_day": row[1],
        "null_timestamps": next(
            c.null_count for c in step.columns if c.name == params.timestamp_column
        ),
        "total": _totals(rows, labels),
    }
    if grouped:
        by_group: dict[Any, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_group.setdefault(r[0], []).append(r)
        summary["groups"] = len(by_group)
        summary["group_detail"] = [
            {group: value, **_entry(group_rows)}
            for value, group_rows in list(by_group.items())[:MAX_GROUPS]
        ]
        summary["group_detail_truncated"] = len(by_group) > MAX_GROUPS
    artifact = ArtifactFile(name, path, CSV_TYPE, sha)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _first_day(unit: str, index: int) -> date:
    """The first day of a month or year period."""
    return date(index, 1, 1) if unit == "year" else date(index // 12, index % 12 + 1, 1)


def _label(unit: str, index: int) -> str:
    """2025 or 2025-03."""
    return str(index) if unit == "year" else f"{index // 12:04d}-{index % 12 + 1:02d}"


def _label_sql(unit: str, index: str) -> str:
    if unit == "year":
        return f"CAST({index} AS VARCHAR)"
    return f"strftime({period_label_sql('month', index)}, '%Y-%m')"


def _comparison(unit: str, periods: list[int]) -> str:
    """Rows (g, period, count, change, percent_change, p) of every group and compared period."""
    if not periods:
        return (
            "SELECT g, CAST(NULL AS VARCHAR) AS period, CAST(0 AS BIGINT) AS count,"
            " CAST(NULL AS BIGINT) AS change, CAST(NULL AS DOUBLE) AS percent_change,"
            " CAST(NULL AS BIGINT) AS p FROM cmp WHERE false"
        )
    latest = literal(periods[0])
    values = ", ".join(f"({p})" for p in periods)
    return (
        "WITH groups AS (SELECT DISTINCT g FROM cmp),"
        f" grid AS (SELECT groups.g, v.p FROM groups, (VALUES {values}) AS v(p)),"
        " filled AS (SELECT grid.g, grid.p, coalesce(cmp.n, 0) AS n FROM grid LEFT JOIN cmp"
        " ON cmp.g IS NOT DISTINCT FROM grid.g AND cmp.p = grid.p),"
        f" latest AS (SELECT g, n AS latest FROM filled WHERE p = {latest})"
        f" SELECT f.g, {_label_sql(unit, 'f.p')} AS period, f.n AS count,"
        f" CASE WHEN f.p <> {latest} THEN l.latest - f.n END AS change,"
        f" CASE WHEN f.p <> {latest} AND f.n > 0"
        " THEN 100.0 * (l.latest - f.n) / f.n END AS percent_change, f.p"
        " FROM filled AS f JOIN latest AS l ON l.g IS NOT DISTINCT FROM f.g"
        " ORDER BY f.g ASC NULLS LAST, f.p DESC"
    )


def _entry(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """{latest, earlier: [{period, count, change, percent_change}]} of one group's rows."""
    latest, *earlier = rows
    return {
        "latest": latest[2],
        "earlier": [
            {"period": r[1], "count": r[2], "change": r[3], "percent_change": r[4]} for r in earlier
        ],
    }


def _totals(rows: list[tuple[Any, ...]], labels: list[str]) -> dict[str, Any]:
    """The comparison of all events: the groups' counts added up."""
    counts = dict.fromkeys(labels, 0)
    for r in rows:
        counts[r[1]] += r[2]
    if not labels:
        return {"latest": None, "earlier": []}
    latest = counts[labels[0]]
    return {
        "latest": latest,
        "earlier": [
            {
                "period": label,
                "count": counts[label],
                "change": latest - counts[label],
                "percent_change": 100.0 * (latest - counts[label]) / counts[label]
                if counts[label]
                else None,
            }
            for label in labels[1:]
        ],
    }
