"""Rows equal over many columns, found a batch of columns at a time.

A GROUP BY over every column of a wide dataset reads them all in one query, which DuckDB cannot
do within its memory limit past a few hundred columns (it holds a page and vectors per
column). Instead the rows are grouped by a first batch of columns, then each group is split by
the next batch, and so on: a row's group is the lowest row number among the rows equal to it so
far. A row alone in its group has no twin, so it is dropped, and later rounds read fewer rows.
Groups are windows partitioned by the columns: nulls are equal, as in a GROUP BY.
"""

from collections.abc import Sequence
from typing import Any

import duckdb

from services.processing.processors.base import StepInput
from services.processing.processors.duck import (
    batched,
    planned_wide,
    run_with_progress,
    scan_width,
)


def equal_rows(
    con: duckdb.DuckDBPyConnection,
    step: StepInput,
    src: str,
    exprs: Sequence[str],
    name: str,
    *,
    where: str = "",
    params: list[Any] | None = None,
    message: str,
    start: float = 0.0,
    end: float = 1.0,
) -> str:
    """A temp table of the rows of `src` (read with file_row_number) that equal another row
    over `exprs`: (rn: the row number, g: the lowest row number of its group). `where`
    (with its `params`) limits the rows looked at; rows not in the table are unique. Returns
    the table's name (`name` and a round number)."""
    batches = batched(list(exprs), scan_width(step))
    table = ""
    for n, batch in enumerate(batches):
        keys = ", ".join(f"{expr} AS k{i}" for i, expr in enumerate(batch))
        if not table:
            rows = f"(SELECT file_row_number AS rn, 0 AS grp, {keys} FROM {src}{where})"
        else:
            taken = ", ".join(f"s.k{i}" for i in range(len(batch)))
            values = f"(SELECT file_row_number AS rn, {keys} FROM {src})"
            rows = (
                f"(SELECT d.rn, d.g AS grp, {taken} FROM {table} d JOIN {values} s ON s.rn = d.rn)"
            )
        partition = ", ".join(["grp", *(f"k{i}" for i in range(len(batch)))])
        sql = (
            f"CREATE TEMP TABLE {name}_{n} AS SELECT rn, g FROM (SELECT rn, min(rn) OVER w AS g,"
            f" count(*) OVER w AS n FROM {rows} WINDOW w AS (PARTITION BY {partition}))"
            " WHERE n > 1"
        )
        part = (end - start) / len(batches)
        with planned_wide(con, 2 * len(batch)):
            run_with_progress(
                con,
                sql,
                step.report,
                message,
                start=start + n * part,
                end=start + (n + 1) * part,
                params=None if table else params,
            )
        if table:
            con.execute(f"DROP TABLE {table}")
        table = f"{name}_{n}"
        left = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        if left == (0,):
            break  # every row is unique
    return table
