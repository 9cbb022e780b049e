"""Splitting a rejected batch inside PostgreSQL, so a rejected row costs a statement on the
server rather than a COPY round trip.

The batch goes once into a temporary table of text columns (with its row numbers). Then one
function call: first, set-based, the rows that pass the staging table's CHECK constraints and
NOT NULLs (evaluated as a query) are inserted at once and only the others are tried one by
one, each keeping the database's own message; if that bulk insert fails anyway (a type, a
unique index), the batch is inserted in ranges of CHUNK_ROWS, a failing range halved down to
single rows. Each try is a subtransaction: a failed one leaves nothing behind.
"""

from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

RAW_TABLE = "assay_raw_rows"
ROW_COLUMN = "assay_row"
CHUNK_ROWS = 16
# How the function runs the prepared insert of rows $1..$2 (a format() template).
_ONE = "EXECUTE assay_insert_one(%s, %s)"

_FUNCTION = """
CREATE OR REPLACE FUNCTION pg_temp.assay_insert_rows(
    good text, suspects text, one text, lo bigint, hi bigint, chunk bigint
) RETURNS TABLE (row_number bigint, reason text) LANGUAGE plpgsql AS $$
DECLARE
    ranges bigint[];
    a bigint;
    b bigint;
    m bigint;
    r bigint;
    start bigint := lo;
BEGIN
    BEGIN
        EXECUTE good USING lo, hi;
        FOR r IN EXECUTE suspects USING lo, hi LOOP
            BEGIN
                EXECUTE format(one, r, r);
            EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
                row_number := r;
                reason := SQLERRM;
                RETURN NEXT;
            END;
        END LOOP;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- not decided by the checks alone: by ranges below
    END;
    WHILE start <= hi LOOP
        ranges := ARRAY[[start, least(start + chunk - 1, hi)]];
        WHILE cardinality(ranges) > 0 LOOP
            a := ranges[cardinality(ranges) / 2][1];
            b := ranges[cardinality(ranges) / 2][2];
            ranges := ranges[1:cardinality(ranges) / 2 - 1];
            BEGIN
                EXECUTE format(one, a, b);
            EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
                IF a = b THEN
                    row_number := a;
                    reason := SQLERRM;
                    RETURN NEXT;
                ELSE
                    m := (a + b) / 2;
                    ranges := ranges || ARRAY[[m + 1, b]] || ARRAY[[a, m]];
                END IF;
            END;
        END LOOP;
        start := start + chunk;
    END LOOP;
END $$
"""


class ServerSplit:
    """Per load: the temporary table, the function and the statements; then one call per
    rejected batch."""

    def __init__(
        self, db: psycopg.Connection[Any], staging: sql.Composable, names: list[str]
    ) -> None:
        self._db = db
        db.execute(_FUNCTION)
        regclass = staging.as_string(db)
        types = dict(
            db.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [regclass],
            ).fetchall()
        )
        passes = sql.SQL(passes_checks(db, regclass) or "true")
        raw, row = sql.Identifier(RAW_TABLE), sql.Identifier(ROW_COLUMN)
        text_columns = sql.SQL(", ").join(
            sql.SQL("{} text").format(sql.Identifier(n)) for n in names
        )
        db.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({} bigint PRIMARY KEY, {})").format(
                raw, row, text_columns
            )
        )
        columns = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        typed = sql.SQL("(SELECT {}, {} FROM {} WHERE {} BETWEEN $1 AND $2) AS typed").format(
            row,
            sql.SQL(", ").join(
                sql.SQL("{}::{} AS {}").format(
                    sql.Identifier(n), sql.SQL(types[n]), sql.Identifier(n)
                )
                for n in names
            ),
            raw,
            row,
        )
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM ").format(staging, columns, columns)
        self._good = (insert + typed + sql.SQL(" WHERE ") + passes).as_string(db)
        self._suspects = (
            sql.SQL("SELECT {} FROM ").format(row)
            + typed
            + sql.SQL(" WHERE NOT (")
            + passes
            + sql.SQL(") ORDER BY {}").format(row)
        ).as_string(db)
        # Prepared once: a single row's insert then runs on a cached plan.
        db.execute("PREPARE assay_insert_one(bigint, bigint) AS " + (insert + typed).as_string(db))
        self._copy = sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT csv)").format(raw, row, columns)
        self._truncate = sql.SQL("TRUNCATE {}").format(raw)

    def insert(self, csv_with_row_numbers: memoryview, first: int, last: int) -> dict[int, str]:
        """Rows first..last (their CSV starts with the row number): those the staging table
        took are in it; the others by row number, with the database's reason."""
        with self._db.transaction():
            self._db.execute(self._truncate)
            with self._db.cursor().copy(self._copy) as copy:
                copy.write(csv_with_row_numbers)
            self._db.execute("ANALYZE " + RAW_TABLE)
            rows = self._db.execute(
                "SELECT row_number, reason FROM pg_temp.assay_insert_rows(%s, %s, %s, %s, %s, %s)",
                [self._good, self._suspects, _ONE, first, last, CHUNK_ROWS],
            ).fetchall()
        return dict(rows)


def passes_checks(db: psycopg.Connection[Any], regclass: str) -> str:
    """A condition true for a row that passes the table's CHECKs and NOT NULLs ("" if none)."""
    checks = [
        f"({expression}) IS NOT FALSE"
        for (expression,) in db.execute(
            "SELECT pg_get_expr(conbin, conrelid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'c'",
            [regclass],
        )
    ]
    not_null = db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND attnotnull AND NOT attisdropped",
        [regclass],
    ).fetchall()
    checks += [sql.Identifier(n).as_string(db) + " IS NOT NULL" for (n,) in not_null]
    return " AND ".join(checks)


CHECKED_TABLE = "assay_suspect_rows"
BATCH_TABLE = "assay_batch_rows"

_SUSPECTS_FUNCTION = """
CREATE OR REPLACE FUNCTION pg_temp.assay_insert_suspects()
RETURNS TABLE (row_number bigint, reason text) LANGUAGE plpgsql AS $$
DECLARE
    r bigint;
BEGIN
    FOR r IN SELECT assay_row FROM pg_temp.assay_suspect_rows ORDER BY assay_row LOOP
        BEGIN
            EXECUTE format('EXECUTE assay_insert_suspect(%s)', r);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
            row_number := r;
            reason := SQLERRM;
            RETURN NEXT;
        END;
    END LOOP;
END $$
"""


class CheckSplit:
    """For a table with CHECKs or NOT NULLs: one COPY of the batch into a temporary table
    without them (the CSV is parsed once), the rows that pass into the staging table in one
    INSERT ... SELECT, those that do not (about as few as it rejects) into a second temporary
    table, where the constraint each breaks gives its reason, worded as the database words it
    (a row no constraint explains is tried alone for the database's own message). None when
    the table has no such constraints."""

    @classmethod
    def for_table(
        cls, db: psycopg.Connection[Any], staging: sql.Composable, names: list[str]
    ) -> "CheckSplit | None":
        passes = passes_checks(db, staging.as_string(db))
        return cls(db, staging, names, passes) if passes else None

    def __init__(
        self, db: psycopg.Connection[Any], staging: sql.Composable, names: list[str], passes: str
    ) -> None:
        self._db = db
        suspects, row = sql.Identifier(CHECKED_TABLE), sql.Identifier(ROW_COLUMN)
        columns = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        batch = sql.Identifier(BATCH_TABLE)
        # Typed like the staging table, without its constraints (CREATE TABLE AS copies none).
        for table in (batch, suspects):
            db.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} AS SELECT 0::bigint AS {}, {} FROM {} WITH NO DATA"
                ).format(table, row, columns, staging)
            )
        db.execute(_SUSPECTS_FUNCTION)
        db.execute(
            sql.SQL(
                "PREPARE assay_insert_suspect(bigint) AS INSERT INTO {} ({}) SELECT {} FROM {} "
                "WHERE {} = $1"
            )
            .format(staging, columns, columns, suspects, row)
            .as_string(db)
        )
        condition = sql.SQL(passes)
        self._batch = sql.SQL("COPY {} ({}, {}) FROM STDIN (FORMAT csv)").format(
            batch, row, columns
        )
        self._good = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {}").format(
            staging, columns, columns, batch, condition
        )
        self._suspects = sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE NOT ({})").format(
            suspects, batch, condition
        )
        self._truncate = sql.SQL("TRUNCATE {}, {}").format(batch, suspects)
        reason = sql.SQL(_reason(db, staging))  # read from the catalog once
        self._explain = sql.SQL("DELETE FROM {} WHERE {} IS NOT NULL RETURNING {}, {}").format(
            suspects, reason, row, reason
        )

    def insert(self, csv: bytes, csv_with_row_numbers: bytes) -> dict[int, str]:
        """The batch's rows that the table takes are in it; the others by row number, with
        the database's reason. Raises as COPY does when a row fails otherwise (a type)."""
        with self._db.transaction():
            with self._db.cursor().copy(self._batch) as copy:
                copy.write(csv_with_row_numbers)
            self._db.execute(self._good)
            self._db.execute(self._suspects)
            # The constraint each suspect breaks, as the database words it, in one statement;
            # a row none explains (a volatile check) is tried alone.
            rows = self._db.execute(self._explain).fetchall()
            rows += self._db.execute(
                "SELECT row_number, reason FROM pg_temp.assay_insert_suspects()"
            ).fetchall()
            self._db.execute(self._truncate)
        return dict(rows)


def _reason(db: psycopg.Connection[Any], staging: sql.Composable) -> str:
    """SQL for the message the database gives a row that breaks the table's first NOT NULL
    (by column order) or CHECK (by name, the order PostgreSQL checks them in); NULL if none."""
    regclass = staging.as_string(db)
    (relation,) = db.execute("SELECT relname FROM pg_class WHERE oid = %s::regclass", [regclass])
    (name,) = relation
    cases = [
        sql.SQL("WHEN {} IS NULL THEN {}").format(
            sql.Identifier(column),
            sql.Literal(
                f'null value in column "{column}" of relation "{name}" violates not-null constraint'
            ),
        )
        for (column,) in db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND attnotnull AND NOT attisdropped ORDER BY attnum",
            [regclass],
        )
    ]
    cases += [
        sql.SQL("WHEN ({}) IS FALSE THEN {}").format(
            sql.SQL(expression),
            sql.Literal(f'new row for relation "{name}" violates check constraint "{constraint}"'),
        )
        for constraint, expression in db.execute(
            "SELECT conname, pg_get_expr(conbin, conrelid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'c' ORDER BY conname",
            [regclass],
        )
    ]
    return sql.SQL("(CASE {} END)").format(sql.SQL(" ").join(cases)).as_string(db)


def with_row_numbers(batch: pa.RecordBatch, first: int) -> pa.RecordBatch:
    """The batch with its row numbers as a first column."""
    numbers = pa.array(range(first, first + batch.num_rows), pa.int64())
    return pa.RecordBatch.from_arrays([numbers, *batch.columns], [ROW_COLUMN, *batch.schema.names])
