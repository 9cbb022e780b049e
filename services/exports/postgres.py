"""TableLoader on PostgreSQL: COPY (CSV) into a staging table, then apply it in one transaction.

Why it is safe to retry: every attempt loads into its own staging table
(`assay_stage_<export>_<attempt>`, those of earlier attempts are dropped first), and the
target only changes in the final transaction, which also records the export in the
destination's `assay_export_loads` table. A later attempt that finds that record applies
nothing again; a killed attempt never got to that transaction, so the target is untouched.

Owners: the destination is shared by every owner of the service, so `assay_export_tables`
records which owner's export created each table, and another owner's export may not replace,
append to or create it. Tables no export created (the operator's) stay open to append/replace.

Rows the target rejects: a batch that fails is split where PostgreSQL says it failed (the
`line N` of the COPY error's context: the rows before it are good, that row is rejected with
the database's message), or halved when the error names no line, down to single rows.
"""

import contextlib
import io
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from ports.exports import (
    DestinationError,
    DestinationUnavailable,
    LoadCancelled,
    LoadRequest,
    LoadSummary,
    RejectedRow,
)
from schemas.domain.exports import ExportMode
from services.exports.arrow_source import record_batches, schema_and_rows
from services.exports.server_split import CheckSplit, ServerSplit, with_row_numbers

MARKER_TABLE = "assay_export_loads"
# Which owner's export created each table of a schema: another owner's export may not
# replace, append to or create it (the operator's own tables, not in it, stay open to all).
OWNERS_TABLE = "assay_export_tables"
STAGING_PREFIX = "assay_stage_"
_LINE = re.compile(r"\bline (\d+)\b")
# After a rejected row, the rest of a batch goes in pieces about twice the good run that
# preceded it: a dense run of bad rows costs small statements, a sparse one large ones.
MIN_PIECE_ROWS = 64
_CSV = pa_csv.WriteOptions(include_header=False)


def column_type(field_type: pa.DataType) -> str:
    """The PostgreSQL type a column of the typed copy becomes."""
    t = field_type
    if pa.types.is_dictionary(t):
        return column_type(t.value_type)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "numeric" if t == pa.uint64() else "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision}, {t.scale})"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz is not None else "timestamp"
    if pa.types.is_time(t):
        return "time"
    return "text"


def conninfo(url: str) -> str:
    """A libpq URL from a SQLAlchemy-style one (`postgresql+psycopg://...`)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


class PostgresTableLoader:
    """Loads into the PostgreSQL databases named in ASSAY_DESTINATIONS."""

    def __init__(
        self, urls: Mapping[str, str], *, batch_rows: int = 100_000, connect_timeout_s: int = 10
    ) -> None:
        self._urls = dict(urls)
        self._batch_rows = batch_rows
        self._connect_timeout_s = connect_timeout_s

    def destinations(self) -> list[str]:
        """The names of the configured destinations."""
        return sorted(self._urls)

    def applied(self, request: LoadRequest) -> LoadSummary | None:
        """What an earlier attempt of this export applied, from the destination's record."""
        schema, _ = _split(request.table)
        try:
            with self._connect(request.destination) as db:
                return _recorded(db, schema, request)
        except psycopg.OperationalError as exc:
            raise DestinationUnavailable(
                f"lost the connection to destination {request.destination!r}"
            ) from exc

    def load(
        self,
        request: LoadRequest,
        *,
        progress: Callable[[int, int], None],
        rejected: Callable[[list[RejectedRow]], None],
        should_stop: Callable[[], bool],
    ) -> LoadSummary:
        """Stream the file into a staging table, then apply it in one transaction."""
        try:
            return self._load(request, progress, rejected, should_stop)
        except psycopg.OperationalError as exc:  # the connection broke: another attempt
            raise DestinationUnavailable(
                f"lost the connection to destination {request.destination!r}"
            ) from exc

    def _load(
        self,
        request: LoadRequest,
        progress: Callable[[int, int], None],
        rejected: Callable[[list[RejectedRow]], None],
        should_stop: Callable[[], bool],
    ) -> LoadSummary:
        schema_name, name = _split(request.table)
        target = _qualified(schema_name, name)
        staging_name = f"{STAGING_PREFIX}{request.export_id.hex}_{request.attempt}"
        staging = _qualified(schema_name, staging_name)
        arrow_schema, total = schema_and_rows(request.source)
        with self._connect(request.destination) as db:
            # The staging table's batches need not wait for the disk: a crash loses the
            # attempt, which a retry redoes from scratch. The final apply is durable.
            db.execute("SET synchronous_commit = off")
            _drop_stale_staging(db, schema_name, request)
            exists = _exists(db, target)
            _check_owner(db, schema_name, name, request, exists)
            if request.mode == ExportMode.create and exists:
                raise DestinationError(
                    f"table {request.table} already exists (mode create); "
                    "use mode append or replace"
                )
            if request.mode == ExportMode.append and exists:
                # Straight into the table, in one transaction with the record that it was
                # applied: no second copy from staging; a crash or a cancel rolls it all back.
                try:
                    with db.transaction():
                        copy = self._copy(db, target, name, name, arrow_schema, request, rejected)
                        self._batches(copy, request, total, progress, should_stop)
                        summary = _apply(
                            db,
                            request,
                            target,
                            target,
                            exists,
                            arrow_schema,
                            copy.summary(request.attempt),
                        )
                        if summary.attempt != request.attempt:
                            raise _AppliedElsewhere(summary)  # roll this attempt's rows back
                except _AppliedElsewhere as elsewhere:
                    return elsewhere.summary
                return summary
            try:
                _create_staging(db, staging, target if exists else None, arrow_schema, request)
                copy = self._copy(db, staging, staging_name, name, arrow_schema, request, rejected)
                self._batches(copy, request, total, progress, should_stop)
                summary = _apply(
                    db,
                    request,
                    target,
                    staging,
                    exists,
                    arrow_schema,
                    copy.summary(request.attempt),
                )
            except BaseException:
                _drop(db, staging)
                raise
        return summary

    def _copy(
        self,
        db: psycopg.Connection[Any],
        into: sql.Identifier,
        into_name: str,
        name: str,
        arrow_schema: pa.Schema,
        request: LoadRequest,
        rejected: Callable[[list[RejectedRow]], None],
    ) -> "_Copy":
        return _Copy(db, into, arrow_schema, _named_for_target(into_name, name, rejected))

    def _batches(
        self,
        copy: "_Copy",
        request: LoadRequest,
        total: int | None,
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> None:
        batches = record_batches(request.source, self._batch_rows)
        for batch, csv, numbered in prepared(batches, copy.is_rejecting):
            if should_stop():
                raise LoadCancelled()
            copy.batch(batch, csv, numbered)
            progress(copy.rows_done, total or copy.rows_done)
        if should_stop():
            raise LoadCancelled()

    def _connect(self, destination: str) -> psycopg.Connection[Any]:
        url = self._urls.get(destination)
        if url is None:
            raise DestinationError(f"destination {destination!r} is not configured")
        # autocommit: each `with db.transaction()` is a transaction of its own.
        # The errors are not chained: psycopg's text may quote the URL, password included
        # (a malformed one), and a logged traceback shows the chain.
        try:
            return psycopg.connect(
                conninfo(url), autocommit=True, connect_timeout=self._connect_timeout_s
            )
        except psycopg.OperationalError:
            raise DestinationUnavailable(f"destination {destination!r} is unreachable") from None
        except (psycopg.Error, ValueError):
            raise DestinationError(
                f"the URL of destination {destination!r} is malformed (in ASSAY_DESTINATIONS; "
                "a password must be percent-encoded)"
            ) from None


class _AppliedElsewhere(Exception):
    """Another attempt of this export applied it first: this attempt's rows must go."""

    def __init__(self, summary: LoadSummary) -> None:
        self.summary = summary


class _Copy:
    """COPY of record batches into the staging table, splitting the batches that fail."""

    def __init__(
        self,
        db: psycopg.Connection[Any],
        staging: sql.Composable,
        schema: pa.Schema,
        rejected: Callable[[list[RejectedRow]], None],
    ) -> None:
        self._db, self._rejected, self._staging = db, rejected, staging
        self._names = schema.names
        self._server: ServerSplit | None = None
        self._checks: CheckSplit | None = None
        self._checks_looked_up = False
        self._rejecting = False
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in schema.names)
        self._statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(staging, columns)
        self.rows_done = self.loaded = self.failed = 0

    def summary(self, attempt: int) -> LoadSummary:
        return LoadSummary(rows_loaded=self.loaded, rows_failed=self.failed, attempt=attempt)

    def is_rejecting(self) -> bool:
        """Whether the last batch had rejected rows (the next likely has some too)."""
        return self._rejecting

    def batch(
        self, batch: pa.RecordBatch, csv: bytes | None = None, numbered: bytes | None = None
    ) -> None:
        """Load one batch: rows the table takes are in staging, the others reported."""
        first_row = self.rows_done + 1
        # After a batch with rejected rows the next one likely has some too: straight to the
        # split, without a COPY that would fail.
        csv = csv if csv is not None else to_csv(batch)
        if not self._rejecting and self._try(batch, csv) is None:
            self.loaded += batch.num_rows
            bad = []
        else:
            try:
                bad = self._split_by_checks(batch, csv, numbered, first_row)
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
                try:  # not (only) the checks: a type, a unique index
                    bad = self._split_on_server(batch, first_row)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
                    bad = self._split_here(batch, first_row)  # text the raw table refused (NUL)
        self.rows_done += batch.num_rows
        self._rejecting = bool(bad)
        if bad:
            self.failed += len(bad)
            self._rejected(sorted(bad, key=lambda r: r.row_number))

    def _split_by_checks(
        self, batch: pa.RecordBatch, csv: bytes, numbered: bytes | None, first_row: int
    ) -> list[RejectedRow]:
        if not self._checks_looked_up:
            self._checks = CheckSplit.for_table(self._db, self._staging, self._names)
            self._checks_looked_up = True
        if self._checks is None:
            raise psycopg.errors.DataError("the table has no CHECK or NOT NULL to split by")
        if numbered is None:
            numbered = to_csv(with_row_numbers(batch, first_row))
        reasons = self._checks.insert(csv, numbered)
        return self._took(batch, first_row, reasons)

    def _took(
        self, batch: pa.RecordBatch, first_row: int, reasons: dict[int, str]
    ) -> list[RejectedRow]:
        self.loaded += batch.num_rows - len(reasons)
        return [
            RejectedRow(
                row_number=row,
                values=batch.slice(row - first_row, 1).to_pylist()[0],
                reason=reason,
            )
            for row, reason in reasons.items()
        ]

    def _split_on_server(self, batch: pa.RecordBatch, first_row: int) -> list[RejectedRow]:
        if self._server is None:
            self._server = ServerSplit(self._db, self._staging, self._names)
        buffer = io.BytesIO()
        pa_csv.write_csv(with_row_numbers(batch, first_row), buffer, _CSV)
        last_row = first_row + batch.num_rows - 1
        reasons = self._server.insert(buffer.getbuffer(), first_row, last_row)
        return self._took(batch, first_row, reasons)

    def _split_here(self, batch: pa.RecordBatch, first_row: int) -> list[RejectedRow]:
        """The batch in pieces, each a COPY: split where the error's line says, else halved."""
        pieces = [(0, batch.num_rows)]  # a stack: the next piece to try is last
        bad: list[RejectedRow] = []
        while pieces:
            start, end = pieces.pop()
            error = self._try(batch.slice(start, end - start))
            if error is None:
                self.loaded += end - start
                continue
            line = _failed_line(error)
            if end - start == 1 or (line is not None and 1 <= line <= end - start):
                at = start + (line or 1) - 1
                bad.append(_rejected_row(batch, at, first_row + at, error))
                rest = _pieces(at + 1, end, max(MIN_PIECE_ROWS, 2 * (at - start)))
                pieces.extend(reversed(rest))
                if at > start:
                    pieces.append((start, at))  # before the failing line: good rows
            else:  # no line to go by: halves
                middle = (start + end) // 2
                pieces.extend([(middle, end), (start, middle)])
        return bad

    def _try(self, rows: pa.RecordBatch, csv: bytes | None = None) -> psycopg.Error | None:
        """COPY the rows (a transaction of its own); the database's error when it refused them."""
        data = csv if csv is not None else to_csv(rows)
        try:
            # A transaction of its own, or a savepoint inside the load's (append).
            with self._db.transaction(), self._db.cursor().copy(self._statement) as copy:
                copy.write(data)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            return exc
        return None


def _named_for_target(
    staging: str, table: str, rejected: Callable[[list[RejectedRow]], None]
) -> Callable[[list[RejectedRow]], None]:
    """The database names the staging table in its messages; the user knows the target."""

    def report(rows: list[RejectedRow]) -> None:
        rejected([replace(r, reason=r.reason.replace(staging, table)) for r in rows])

    return report


def to_csv(batch: pa.RecordBatch) -> bytes:
    buffer = io.BytesIO()
    pa_csv.write_csv(batch, buffer, _CSV)
    return buffer.getvalue()


def prepared(
    batches: Iterator[pa.RecordBatch], numbered: Callable[[], bool], ahead: int = 2
) -> Iterator[tuple[pa.RecordBatch, bytes, bytes | None]]:
    """The batches with their CSV (and, while `numbered()`, their CSV with row numbers
    first), read and written in a thread `ahead` batches in advance: the file is read and the
    next batch's CSV written while the server takes the current one (pyarrow works without
    the GIL)."""
    done = object()
    ready: queue.Queue[Any] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            first = 1
            for batch in batches:
                if stop.is_set():
                    return
                rows = to_csv(with_row_numbers(batch, first)) if numbered() else None
                ready.put((batch, to_csv(batch), rows))
                first += batch.num_rows
            ready.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    worker = threading.Thread(target=produce, name="export-reader", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):  # unblock a producer waiting to put
            while True:
                ready.get_nowait()
        worker.join(timeout=10)


def _pieces(start: int, end: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, end)) for s in range(start, end, size)]


def _failed_line(error: psycopg.Error) -> int | None:
    match = _LINE.search(error.diag.context or "")
    return int(match.group(1)) if match else None


def _rejected_row(
    batch: pa.RecordBatch, index: int, row_number: int, error: psycopg.Error
) -> RejectedRow:
    values = batch.slice(index, 1).to_pylist()[0]
    reason = error.diag.message_primary or str(error).splitlines()[0]
    return RejectedRow(row_number=row_number, values=values, reason=reason)


def _split(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def _qualified(schema: str | None, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def _recorded(
    db: psycopg.Connection[Any], schema: str | None, request: LoadRequest
) -> LoadSummary | None:
    """The summary the destination recorded for this export; None when none applied it."""
    marker = _qualified(schema, MARKER_TABLE)
    if not _exists(db, marker):
        return None
    row = db.execute(
        sql.SQL("SELECT rows_loaded, rows_failed, attempt FROM {} WHERE export_id = %s").format(
            marker
        ),
        [request.export_id],
    ).fetchone()
    return LoadSummary(rows_loaded=row[0], rows_failed=row[1], attempt=row[2]) if row else None


def _owner_of(db: psycopg.Connection[Any], schema: str | None, name: str) -> str | None:
    """The owner whose export created the table; None when no export did."""
    owners = _qualified(schema, OWNERS_TABLE)
    if not _exists(db, owners):
        return None
    row = db.execute(
        sql.SQL("SELECT owner_id FROM {} WHERE table_name = %s").format(owners), [name]
    ).fetchone()
    return row[0] if row else None


def _check_owner(
    db: psycopg.Connection[Any], schema: str | None, name: str, request: LoadRequest, exists: bool
) -> None:
    """DestinationError when another owner's export created the (existing) table."""
    owner = _owner_of(db, schema, name)
    if exists and owner is not None and owner != request.owner_id:
        raise DestinationError(
            f"table {request.table} was created by another owner's export; "
            "export into a table of your own"
        )


def _claim_table(
    db: psycopg.Connection[Any], schema: str | None, name: str, request: LoadRequest
) -> None:
    """Record the export's owner as the table's (inside the apply's transaction); the row
    lock makes two owners creating one name at once wait for each other."""
    owners = _qualified(schema, OWNERS_TABLE)
    db.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, owner_id) VALUES (%s, %s) ON CONFLICT (table_name)"
            " DO UPDATE SET owner_id = EXCLUDED.owner_id"
        ).format(owners),
        [name, request.owner_id],
    )


def _exists(db: psycopg.Connection[Any], table: sql.Composable) -> bool:
    row = db.execute("SELECT to_regclass(%s)", [table.as_string(db)]).fetchone()
    return row is not None and row[0] is not None


def _drop(db: psycopg.Connection[Any], table: sql.Composable) -> None:
    # When the connection is gone, the next attempt drops it.
    with contextlib.suppress(psycopg.Error):
        db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))


def _drop_stale_staging(
    db: psycopg.Connection[Any], schema: str | None, request: LoadRequest
) -> None:
    """Drop the staging tables earlier attempts of this export left (a killed worker's)."""
    pattern = f"{STAGING_PREFIX}{request.export_id.hex}\\_%"
    rows = db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = COALESCE(%s, current_schema())"
        " AND tablename LIKE %s",
        [schema, pattern],
    ).fetchall()
    for (name,) in rows:
        db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_qualified(schema, name)))


def _create_staging(
    db: psycopg.Connection[Any],
    staging: sql.Composable,
    like: sql.Composable | None,
    schema: pa.Schema,
    request: LoadRequest,
) -> None:
    """A table shaped like the target (its checks and NOT NULLs reject the same rows), or,
    for a new table, from the source's column types."""
    try:
        if like is None:
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(column_type(f.type)))
                for f in schema
            )
            db.execute(sql.SQL("CREATE TABLE {} ({})").format(staging, columns))
            return
        if request.mode == ExportMode.replace:
            # With the table's indexes too: the staging table becomes the table.
            create = "CREATE TABLE {} (LIKE {} INCLUDING ALL)"
        else:
            # Append copies the rows into the table: the staging table needs no WAL of its own.
            create = (
                "CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
                " INCLUDING GENERATED)"
            )
        db.execute(sql.SQL(create).format(staging, like))
        have = {
            r[0]
            for r in db.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(staging)).description
            or []
        }
        missing = [name for name in schema.names if name not in have]
        if missing:
            raise DestinationError(
                f"table {request.table} has no column(s) {', '.join(missing)} of the source"
            )
    except psycopg.errors.ProgrammingError as exc:  # a permission, a bad schema
        raise DestinationError(
            f"cannot create a staging table: {exc.diag.message_primary}"
        ) from exc


def _apply(
    db: psycopg.Connection[Any],
    request: LoadRequest,
    target: sql.Identifier,
    staging: sql.Identifier,
    exists: bool,
    schema: pa.Schema,
    summary: LoadSummary,
) -> LoadSummary:
    """Swap in (create, replace) or insert (append) the staging table, in one transaction
    that also records the export as applied (a second apply fails on its primary key: then
    the summary recorded by the attempt that applied it)."""
    schema_name, name = _split(request.table)
    marker = _qualified(schema_name, MARKER_TABLE)
    # Two first exports into one schema at once may both try to create it: one does. (A
    # savepoint: an append runs all this inside its load's transaction.)
    with (
        contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable),
        db.transaction(),
    ):
        db.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (export_id uuid PRIMARY KEY, attempt integer"
                " NOT NULL, table_name text NOT NULL, rows_loaded bigint NOT NULL,"
                " rows_failed bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())"
            ).format(marker)
        )
        db.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, owner_id text"
                " NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            ).format(_qualified(schema_name, OWNERS_TABLE))
        )
    rename = sql.SQL("ALTER TABLE {} RENAME TO {}").format(staging, sql.Identifier(name))
    try:
        with db.transaction():
            db.execute("SET LOCAL synchronous_commit = on")
            db.execute(
                sql.SQL(
                    "INSERT INTO {} (export_id, attempt, table_name, rows_loaded, rows_failed)"
                    " VALUES (%s, %s, %s, %s, %s)"
                ).format(marker),
                [
                    request.export_id,
                    request.attempt,
                    request.table,
                    summary.rows_loaded,
                    summary.rows_failed,
                ],
            )
            # Checked again under the transaction: another owner may have created it since.
            still = _exists(db, target)
            owner = _owner_of(db, schema_name, name)
            if still and owner is not None and owner != request.owner_id:
                raise DestinationError(
                    f"table {request.table} was created by another owner's export; "
                    "export into a table of your own"
                )
            if not still:  # this export creates it (a record left by a dropped one is stale)
                _claim_table(db, schema_name, name, request)
            if staging is target:  # appended straight into it, in this transaction
                pass
            elif request.mode == ExportMode.append and exists:
                columns = sql.SQL(", ").join(sql.Identifier(c) for c in schema.names)
                db.execute(
                    sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                        target, columns, columns, staging
                    )
                )
                db.execute(sql.SQL("DROP TABLE {}").format(staging))
            else:
                if request.mode == ExportMode.replace:
                    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
                db.execute(rename)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.table_name == MARKER_TABLE:
            # Another attempt of this export (reaped, yet still running) applied it first.
            if staging is not target:  # appending straight into the table: the caller rolls back
                _drop(db, staging)
            applied = _recorded(db, schema_name, request)
            if applied is None:
                raise DestinationError("this export was applied by another attempt") from exc
            return applied
        raise DestinationError(f"the target refused the rows: {exc.diag.message_primary}") from exc
    except (psycopg.errors.IntegrityError, psycopg.errors.ProgrammingError) as exc:
        raise DestinationError(f"could not apply the load: {exc.diag.message_primary}") from exc
    return summary
