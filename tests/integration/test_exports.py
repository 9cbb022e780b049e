"""Exports into a real PostgreSQL: types, rejected rows, modes, cancel, retry after a crash."""

import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from db.engine import make_engine
from ports.exports import LoadRequest
from ports.repositories import UnitOfWork
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.exports import ExportFailedRow, ExportMode, ExportStatus
from schemas.domain.ids import new_id
from services.exports.postgres import PostgresTableLoader
from tests.fakes import FakeQueue, FakeStorage
from tests.fixtures.databases import _empty_postgres_tables
from tests.integration.exports_support import (
    add_dataset,
    destination_database,
    dsn_of,
    principal,
    query,
    run,
)
from use_cases.errors import InvalidInput
from use_cases.exports import (
    ExportSource,
    cancel_export,
    recover_exports,
    submit_export,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def app_db(tmp_path: Path, sqlite_migrated_template: Path) -> Iterator[str]:
    path = tmp_path / "assay.db"
    shutil.copyfile(sqlite_migrated_template, path)
    yield f"sqlite:///{path}"


@pytest.fixture
def new_uow(app_db: str) -> Iterator[Callable[[], UnitOfWork]]:
    engine = make_engine(app_db)
    yield lambda: SqlUnitOfWork(engine)
    engine.dispose()


@pytest.fixture
def target() -> Iterator[str]:
    with destination_database() as url:
        yield url


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


def submit(new_uow, dataset_id, table: str, mode: ExportMode, owner: str = "alice"):
    return submit_export(
        new_uow(),
        FakeQueue(),
        principal(owner),
        ExportSource(dataset_id=dataset_id),
        "warehouse",
        table,
        mode,
        destinations=["warehouse"],
    )


def typed_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "ratio": pa.array([1.5, None, -2.25, float("inf")], pa.float64()),
            "ok": pa.array([True, False, None, True]),
            "day": pa.array(
                [dt.date(2024, 1, 2), None, dt.date(1999, 12, 31), dt.date(2024, 2, 29)]
            ),
            "at": pa.array(
                [dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC), None] * 2,
                pa.timestamp("us", tz="UTC"),
            ),
            "local": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5)] * 3 + [None], pa.timestamp("ns")),
            "name": pa.array(["plain", "", None, 'quote " comma , and\nnewline']),
            "price": pa.array(
                [Decimal("1.10"), Decimal("-0.05"), None, Decimal("12345.67")], pa.decimal128(9, 2)
            ),
        }
    )


def test_create_makes_the_table_from_the_schema_with_every_row(new_uow, storage, target, tmp_path):
    source = typed_table()
    dataset_id = add_dataset(new_uow(), storage, source, tmp_path)
    export = submit(new_uow, dataset_id, "public.people", ExportMode.create)
    loader = PostgresTableLoader({"warehouse": target})

    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"

    with new_uow() as uow:
        done = uow.exports.get(export.id, principal())
    assert done is not None and done.status == ExportStatus.completed
    assert done.result is not None
    assert (done.result["rows_loaded"], done.result["rows_failed"]) == (4, 0)
    assert done.result["duration_s"] >= 0
    types = dict(
        query(
            target,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'people'",
        )
    )
    assert types == {
        "id": "bigint",
        "ratio": "double precision",
        "ok": "boolean",
        "day": "date",
        "at": "timestamp with time zone",
        "local": "timestamp without time zone",
        "name": "text",
        "price": "numeric",
    }
    rows = query(target, "SELECT * FROM people ORDER BY id")
    expected = [tuple(r.values()) for r in source.to_pylist()]
    assert rows == expected
    # No staging table is left behind.
    assert (
        query(target, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'assay_stage%'") == []
    )


def staging_tables(url: str) -> list[str]:
    sql = "SELECT tablename FROM pg_tables WHERE tablename LIKE 'assay_stage%'"
    return [r[0] for r in query(url, sql)]


def rejecting_target(url: str) -> None:
    query(
        url,
        "CREATE TABLE sales (id bigint NOT NULL, amount bigint CONSTRAINT amount_positive "
        "CHECK (amount >= 0), code integer)",
    )


def sales(n: int) -> pa.Table:
    """Rows where every 7th amount is negative and every 11th code is not a number."""
    return pa.table(
        {
            "id": list(range(1, n + 1)),
            "amount": [-i if i % 7 == 0 else i for i in range(1, n + 1)],
            "code": ["x" + str(i) if i % 11 == 0 else str(i) for i in range(1, n + 1)],
        }
    )


def test_rows_the_target_rejects_are_kept_with_the_database_reason(
    new_uow, storage, target, tmp_path
):
    rejecting_target(target)
    source = sales(200)
    dataset_id = add_dataset(new_uow(), storage, source, tmp_path)
    export = submit(new_uow, dataset_id, "sales", ExportMode.append)
    loader = PostgresTableLoader({"warehouse": target}, batch_rows=64)

    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"

    # Independent of the loader: which rows break the CHECK or the integer type.
    bad = {i for i in range(1, 201) if i % 7 == 0 or i % 11 == 0}
    loaded = [r[0] for r in query(target, "SELECT id FROM sales ORDER BY id")]
    assert loaded == [i for i in range(1, 201) if i not in bad]
    with new_uow() as uow:
        failed = uow.exports.list_failed_rows(principal(), export.id, limit=1000)
        done = uow.exports.get(export.id, principal())
    assert [f.row_number for f in failed] == sorted(bad)
    by_row = {f.row_number: f for f in failed}
    assert by_row[7].values == {"id": 7, "amount": -7, "code": "7"}
    assert by_row[7].reason == (
        'new row for relation "sales" violates check constraint "amount_positive"'
    )
    assert "invalid input syntax for type integer" in by_row[11].reason
    assert by_row[11].values["code"] == "x11"
    assert done is not None and (done.rows_loaded, done.rows_failed) == (200 - len(bad), len(bad))


def test_constraint_reasons_are_worded_exactly_as_the_database_words_them(
    new_uow, storage, target, tmp_path
):
    query(
        target,
        "CREATE TABLE readings (id bigint NOT NULL, low bigint CONSTRAINT b_low CHECK (low >= 0),"
        " high bigint, CONSTRAINT a_order CHECK (high >= low))",
    )
    n = 300
    rows: dict[str, list[int | None]] = {
        "id": [None if i % 13 == 0 else i for i in range(1, n + 1)],
        "low": [-1 if i % 7 == 0 else i for i in range(1, n + 1)],
        "high": [0 if i % 5 == 0 else 2 * i for i in range(1, n + 1)],
    }
    dataset_id = add_dataset(new_uow(), storage, pa.table(rows), tmp_path)
    export = submit(new_uow, dataset_id, "readings", ExportMode.append)
    loader = PostgresTableLoader({"warehouse": target}, batch_rows=64)
    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"
    with new_uow() as uow:
        failed = uow.exports.list_failed_rows(principal(), export.id, limit=1000)
    # What PostgreSQL itself says of each row, inserted alone.
    expected = {}
    with psycopg.connect(dsn_of(target), autocommit=True) as db:
        db.execute("CREATE TEMP TABLE probe (LIKE readings INCLUDING CONSTRAINTS)")
        for i in range(n):
            values = (rows["id"][i], rows["low"][i], rows["high"][i])
            try:
                db.execute("INSERT INTO probe VALUES (%s, %s, %s)", values)
            except psycopg.errors.IntegrityError as exc:
                expected[i + 1] = str(exc.diag.message_primary).replace("probe", "readings")
    assert {f.row_number: f.reason for f in failed} == expected
    assert len(expected) > 50
    loaded = query(target, "SELECT count(*) FROM readings")[0][0]
    assert loaded == n - len(expected)


def test_an_append_keeps_rows_a_unique_index_refuses_row_by_row(new_uow, storage, target, tmp_path):
    query(target, "CREATE TABLE sales (id bigint PRIMARY KEY, amount bigint, code text)")
    query(target, "INSERT INTO sales VALUES (3, 0, 'old'), (8, 0, 'old')")
    dataset_id = add_dataset(new_uow(), storage, sales(20), tmp_path)
    export = submit(new_uow, dataset_id, "sales", ExportMode.append)
    loader = PostgresTableLoader({"warehouse": target}, batch_rows=8)
    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"
    with new_uow() as uow:
        failed = uow.exports.list_failed_rows(principal(), export.id, limit=100)
    assert [f.row_number for f in failed] == [3, 8]
    assert all("duplicate key value violates unique constraint" in f.reason for f in failed)
    assert query(target, "SELECT count(*) FROM sales") == [(20,)]


def test_each_mode(new_uow, storage, target, tmp_path):
    loader = PostgresTableLoader({"warehouse": target})
    first = add_dataset(new_uow(), storage, sales(10), tmp_path)
    second = add_dataset(new_uow(), storage, sales(3), tmp_path)

    created = submit(new_uow, first, "t", ExportMode.create)
    assert run(new_uow, storage, loader, created.id, tmp_path) == "completed"
    assert query(target, "SELECT count(*) FROM t") == [(10,)]

    again = submit(new_uow, first, "t", ExportMode.create)
    assert run(new_uow, storage, loader, again.id, tmp_path) == "failed"
    with new_uow() as uow:
        failed = uow.exports.get(again.id, principal())
    assert failed is not None and failed.error is not None
    assert "already exists" in failed.error["message"]
    assert query(target, "SELECT count(*) FROM t") == [(10,)]

    appended = submit(new_uow, second, "t", ExportMode.append)
    assert run(new_uow, storage, loader, appended.id, tmp_path) == "completed"
    assert query(target, "SELECT count(*) FROM t") == [(13,)]

    replaced = submit(new_uow, second, "t", ExportMode.replace)
    assert run(new_uow, storage, loader, replaced.id, tmp_path) == "completed"
    assert query(target, "SELECT id FROM t ORDER BY id") == [(1,), (2,), (3,)]

    # Append into a missing table creates it.
    fresh = submit(new_uow, second, "other.fresh", ExportMode.append)
    query(target, "CREATE SCHEMA other")
    assert run(new_uow, storage, loader, fresh.id, tmp_path) == "completed"
    assert query(target, "SELECT count(*) FROM other.fresh") == [(3,)]


def test_cancel_a_queued_export_and_a_running_one(new_uow, storage, target, tmp_path):
    dataset_id = add_dataset(new_uow(), storage, sales(2000), tmp_path)
    queued = submit(new_uow, dataset_id, "t", ExportMode.create)
    assert cancel_export(new_uow(), queued.id, principal()).status == ExportStatus.cancelled
    loader = PostgresTableLoader({"warehouse": target})
    assert run(new_uow, storage, loader, queued.id, tmp_path) == "skipped"

    running = submit(new_uow, dataset_id, "t", ExportMode.create)
    slow = PostgresTableLoader({"warehouse": target}, batch_rows=100)
    cancelled: list[object] = []

    def cancel_midway(done: int, total: int) -> None:
        if done >= 300 and not cancelled:
            cancelled.append(cancel_export(new_uow(), running.id, principal()))
        time.sleep(0.02)

    original = slow.load

    def load(request, *, progress, rejected, should_stop):
        def both(done: int, total: int) -> None:
            progress(done, total)
            cancel_midway(done, total)

        return original(request, progress=both, rejected=rejected, should_stop=should_stop)

    slow.load = load  # type: ignore[method-assign]
    assert run(new_uow, storage, slow, running.id, tmp_path) == "cancelled"
    with new_uow() as uow:
        export = uow.exports.get(running.id, principal())
        events = [e.type for e in uow.exports.list_events(principal(), running.id)]
    assert export is not None and export.status == ExportStatus.cancelled
    assert "cancel_requested" in events and events[-1] == "cancelled"
    # The target was never touched and the staging table is gone.
    assert query(target, "SELECT to_regclass('t')") == [(None,)]
    assert (
        query(target, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'assay_stage%'") == []
    )


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from uuid import UUID
    from db.engine import make_engine
    from repositories.unit_of_work import SqlUnitOfWork
    from services.exports.postgres import PostgresTableLoader
    from tests.fakes import FakeStorage
    from use_cases.run_export import run_export

    app_db, target, export_id, source, key, workdir = sys.argv[1:]
    engine = make_engine(app_db)
    storage = FakeStorage()
    storage.put_file(key, Path(source))
    loader = PostgresTableLoader({"warehouse": target}, batch_rows=500)
    original = loader.load

    def load(request, *, progress, rejected, should_stop):
        def slow(done, total):
            progress(done, total)
            if done >= 1500:
                print("loading", flush=True)
                time.sleep(60)  # killed here, mid-load
        return original(request, progress=slow, rejected=rejected, should_stop=should_stop)

    loader.load = load
    run_export(lambda: SqlUnitOfWork(engine), storage, FakeStorage(), loader, UUID(export_id),
               worker_id="doomed", workdir=Path(workdir), heartbeat_interval_s=0.1,
               max_attempts=3, is_transient=lambda exc: False)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [ExportMode.append, ExportMode.replace])
def test_a_worker_killed_mid_load_then_retried_loads_each_row_once(
    app_db, new_uow, storage, target, tmp_path, mode
):
    query(target, "CREATE TABLE t (id bigint, amount bigint, code text)")
    query(target, "INSERT INTO t VALUES (0, 0, 'before')")
    dataset_id = add_dataset(new_uow(), storage, sales(5000), tmp_path)
    export = submit(new_uow, dataset_id, "t", mode)
    with new_uow() as uow:
        dataset = uow.datasets.get(dataset_id, principal())
    assert dataset is not None and dataset.parquet_key
    source = tmp_path / "copy.parquet"
    source.write_bytes(storage.objects[dataset.parquet_key])
    root = Path(__file__).resolve().parents[2]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            app_db,
            target,
            str(export.id),
            str(source),
            dataset.parquet_key,
            str(tmp_path / "w"),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == b"loading"
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    # The target is untouched. A replace left part of the load in the dead attempt's staging
    # table; an append loads straight into the table in one transaction, which died with it.
    assert query(target, "SELECT count(*) FROM t") == [(1,)]
    stale = staging_tables(target)
    if mode == ExportMode.replace:
        assert len(stale) == 1 and stale[0].endswith("_1")
    else:
        assert stale == []

    time.sleep(0.3)
    assert (
        recover_exports(new_uow(), FakeQueue(), heartbeat_timeout_s=0.2, grace_s=60, max_attempts=3)
        == 1
    )
    loader = PostgresTableLoader({"warehouse": target})
    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"

    kept = 5001 if mode == ExportMode.append else 5000  # the row that was there, or not
    assert query(target, "SELECT count(*), count(DISTINCT id) FROM t") == [(kept, kept)]
    assert (
        query(target, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'assay_stage%'") == []
    )
    with new_uow() as uow:
        done = uow.exports.get(export.id, principal())
        events = [e.type for e in uow.exports.list_events(principal(), export.id)]
    assert done is not None and done.attempts == 2 and done.rows_loaded == 5000
    assert "requeued" in events


def test_an_attempt_that_applied_then_died_is_not_applied_again(new_uow, storage, target, tmp_path):
    query(target, "CREATE TABLE t (id bigint, amount bigint, code text)")
    dataset_id = add_dataset(new_uow(), storage, sales(100), tmp_path)
    export = submit(new_uow, dataset_id, "t", ExportMode.append)
    loader = PostgresTableLoader({"warehouse": target})
    with new_uow() as uow:
        claimed = uow.exports.claim(export.id, "doomed", dt.datetime.now(dt.UTC))
        dataset = uow.datasets.get(dataset_id, principal())
        uow.commit()
    assert claimed is not None and dataset is not None and dataset.parquet_key
    source = tmp_path / "copy.parquet"
    source.write_bytes(storage.objects[dataset.parquet_key])
    # The first attempt commits its load, then its worker dies before recording it.
    request = LoadRequest(export.id, 1, "warehouse", "t", ExportMode.append, source)
    loader.load(request, progress=lambda d, t: None, rejected=lambda r: None, should_stop=bool)
    assert query(target, "SELECT count(*) FROM t") == [(100,)]

    time.sleep(0.05)
    recover_exports(new_uow(), FakeQueue(), heartbeat_timeout_s=0.01, grace_s=60, max_attempts=3)
    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"

    assert query(target, "SELECT count(*) FROM t") == [(100,)]
    with new_uow() as uow:
        done = uow.exports.get(export.id, principal())
    assert done is not None and done.rows_loaded == 100 and done.attempts == 2


def test_text_postgresql_cannot_hold_is_rejected_row_by_row(new_uow, storage, target, tmp_path):
    # A NUL character: refused even by the text columns the split uses, so the batch is split
    # by COPYs where PostgreSQL says it failed.
    source = pa.table({"id": [1, 2, 3, 4], "name": ["a", "b\x00c", "d", "e"]})
    dataset_id = add_dataset(new_uow(), storage, source, tmp_path)
    export = submit(new_uow, dataset_id, "t", ExportMode.create)
    loader = PostgresTableLoader({"warehouse": target})
    assert run(new_uow, storage, loader, export.id, tmp_path) == "completed"
    assert query(target, "SELECT id FROM t ORDER BY id") == [(1,), (3,), (4,)]
    with new_uow() as uow:
        failed = uow.exports.list_failed_rows(principal(), export.id)
    assert [(f.row_number, f.values) for f in failed] == [(2, {"id": 2, "name": "b\x00c"})]
    assert "0x00" in failed[0].reason


def test_a_typed_copy_loads_as_the_dataset_columns(target, tmp_path):
    # The copy keeps line numbers and stores `A` as `A_1` (DuckDB ignores case); the table
    # gets the dataset's columns, by the dataset's names.
    copy = pa.table({"__line__": [2, 3], "a": [1, 2], "A_1": ["x", "y"]})
    copy = copy.replace_schema_metadata({"assay.columns": '["a", "A"]'})
    path = tmp_path / "copy.parquet"
    pq.write_table(copy, path)
    loader = PostgresTableLoader({"warehouse": target})
    request = LoadRequest(new_id(), 1, "warehouse", "t", ExportMode.create, path)
    summary = loader.load(
        request, progress=lambda d, t: None, rejected=lambda r: None, should_stop=lambda: False
    )
    assert summary.rows_loaded == 2
    assert query(target, 'SELECT a, "A" FROM t ORDER BY a') == [(1, "x"), (2, "y")]
    columns = "SELECT column_name FROM information_schema.columns WHERE table_name = 't'"
    assert sorted(r[0] for r in query(target, columns)) == ["A", "a"]


def outcome(new_uow, export_id, owner: str = "alice"):
    with new_uow() as uow:
        done = uow.exports.get(export_id, principal(owner))
    assert done is not None
    return done


def test_a_table_another_owners_export_created_is_theirs(new_uow, storage, target, tmp_path):
    loader = PostgresTableLoader({"warehouse": target})
    alices = add_dataset(new_uow(), storage, sales(5), tmp_path)
    bobs = add_dataset(new_uow(), storage, sales(2), tmp_path, owner="bob")
    created = submit(new_uow, alices, "t", ExportMode.create)
    assert run(new_uow, storage, loader, created.id, tmp_path) == "completed"
    before = query(target, "SELECT * FROM t ORDER BY id")
    assert len(before) == 5

    for mode in (ExportMode.replace, ExportMode.append, ExportMode.create):
        attack = submit(new_uow, bobs, "t", mode, owner="bob")
        assert run(new_uow, storage, loader, attack.id, tmp_path) == "failed", mode
        error = outcome(new_uow, attack.id, "bob").error
        assert error is not None and "another owner" in error["message"], mode
        assert query(target, "SELECT * FROM t ORDER BY id") == before, mode

    # Alice's own table stays hers to append to and replace.
    more = add_dataset(new_uow(), storage, sales(3), tmp_path)
    appended = submit(new_uow, more, "t", ExportMode.append)
    assert run(new_uow, storage, loader, appended.id, tmp_path) == "completed"
    assert query(target, "SELECT count(*) FROM t") == [(8,)]
    replaced = submit(new_uow, more, "t", ExportMode.replace)
    assert run(new_uow, storage, loader, replaced.id, tmp_path) == "completed"
    assert query(target, "SELECT count(*) FROM t") == [(3,)]

    # The operator's own table (no export created it) stays open to every owner.
    query(target, "CREATE TABLE shared (id bigint, amount bigint, code text)")
    into = submit(new_uow, bobs, "shared", ExportMode.append, owner="bob")
    assert run(new_uow, storage, loader, into.id, tmp_path) == "completed"
    again = submit(new_uow, alices, "shared", ExportMode.append)
    assert run(new_uow, storage, loader, again.id, tmp_path) == "completed"
    assert query(target, "SELECT count(*) FROM shared") == [(7,)]

    # Once the operator drops alice's table, the name is free again.
    query(target, "DROP TABLE t")
    taken = submit(new_uow, bobs, "t", ExportMode.create, owner="bob")
    assert run(new_uow, storage, loader, taken.id, tmp_path) == "completed"
    stolen = submit(new_uow, alices, "t", ExportMode.replace)
    assert run(new_uow, storage, loader, stolen.id, tmp_path) == "failed"


@pytest.mark.parametrize(
    "table", ["pg_temp.t", "pg_catalog.t", "information_schema.t", "PG_TEMP_3.t"]
)
def test_system_schemas_are_refused_at_submit(new_uow, storage, tmp_path, table):
    dataset_id = add_dataset(new_uow(), storage, sales(1), tmp_path)
    with pytest.raises(InvalidInput, match="system schema"):
        submit(new_uow, dataset_id, table, ExportMode.create)


def test_a_malformed_destination_url_never_shows_its_password(
    new_uow, storage, tmp_path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    loader = PostgresTableLoader({"warehouse": "postgresql://loader:s3cr%et@127.0.0.1:1/db"})
    dataset_id = add_dataset(new_uow(), storage, sales(3), tmp_path)
    export = submit(new_uow, dataset_id, "t", ExportMode.create)

    assert run(new_uow, storage, loader, export.id, tmp_path) == "failed"

    done = outcome(new_uow, export.id)
    assert done.error is not None and "warehouse" in done.error["message"]
    with new_uow() as uow:
        events = uow.exports.list_events(principal(), export.id)
    shown = repr(done) + "".join(repr(e) for e in events)
    assert "s3cr" not in shown
    assert "s3cr" not in caplog.text
    assert "s3cr" not in "".join(
        logging.Formatter().format(r) for r in caplog.records
    )  # tracebacks included


def test_two_attempts_reaching_the_apply_complete_with_the_first(
    new_uow, storage, target, tmp_path
):
    rejecting_target(target)
    source = sales(30)
    dataset_id = add_dataset(new_uow(), storage, source, tmp_path)
    export = submit(new_uow, dataset_id, "sales", ExportMode.append)
    with new_uow() as uow:
        claimed = uow.exports.claim(export.id, "slow", dt.datetime.now(dt.UTC))
        dataset = uow.datasets.get(dataset_id, principal())
        uow.commit()
    assert claimed is not None and dataset is not None and dataset.parquet_key
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(storage.objects[dataset.parquet_key])

    # Attempt 1 is reaped while it still runs; attempt 2 starts before attempt 1 applies, and
    # attempt 1 applies (recording its refused rows) before attempt 2 gets there.
    time.sleep(0.05)
    recover_exports(new_uow(), FakeQueue(), heartbeat_timeout_s=0.01, grace_s=60, max_attempts=3)

    class Racing(PostgresTableLoader):
        def applied(self, request):
            return None  # what attempt 2 saw when it started

        def load(self, request, **callbacks):
            first = LoadRequest(export.id, 1, "warehouse", "sales", ExportMode.append, copy)
            record = lambda rows: add_failed(new_uow, export.id, 1, rows)  # noqa: E731
            PostgresTableLoader.load(
                self,
                replace(first, owner_id="alice"),
                progress=lambda d, t: None,
                rejected=record,
                should_stop=bool,
            )
            return PostgresTableLoader.load(self, request, **callbacks)

    assert run(new_uow, storage, Racing({"warehouse": target}), export.id, tmp_path) == (
        "completed"
    )

    bad = [i for i in range(1, 31) if i % 7 == 0 or i % 11 == 0]
    assert query(target, "SELECT count(*) FROM sales") == [(30 - len(bad),)]  # applied once
    done = outcome(new_uow, export.id)
    assert (done.rows_loaded, done.rows_failed) == (30 - len(bad), len(bad))
    with new_uow() as uow:
        failed = uow.exports.list_failed_rows(principal(), export.id, limit=100)
    assert [(f.row_number, f.attempt) for f in failed] == [(i, 1) for i in bad]
    assert staging_tables(target) == []


def add_failed(new_uow, export_id, attempt: int, rows) -> None:
    with new_uow() as uow:
        uow.exports.add_failed_rows(
            ExportFailedRow(
                export_id=export_id,
                attempt=attempt,
                row_number=r.row_number,
                values=r.values,
                reason=r.reason,
            )
            for r in rows
        )
        uow.commit()


def test_an_export_whose_dataset_was_deleted_fails_saying_so(new_uow, storage, target, tmp_path):
    dataset_id = add_dataset(new_uow(), storage, sales(3), tmp_path)
    export = submit(new_uow, dataset_id, "t", ExportMode.create)
    with new_uow() as uow:
        uow.datasets.delete(dataset_id)  # what the API refuses while the export is queued
        uow.commit()
    loader = PostgresTableLoader({"warehouse": target})
    assert run(new_uow, storage, loader, export.id, tmp_path) == "failed"
    error = outcome(new_uow, export.id).error
    assert error is not None and error["type"] == "DestinationError"
    assert "source dataset/job was deleted" in error["message"]


@pytest.fixture
def pg_new_uow(postgres_migrated_url: str) -> Iterator[Callable[[], UnitOfWork]]:
    _empty_postgres_tables(postgres_migrated_url)
    engine = make_engine(postgres_migrated_url)
    yield lambda: SqlUnitOfWork(engine)
    engine.dispose()


def test_non_finite_values_of_a_refused_row_are_kept_on_postgresql(
    pg_new_uow, storage, target, tmp_path
):
    query(target, "CREATE TABLE m (id bigint, ratio double precision CHECK (ratio < 1e300))")
    source = pa.table({"id": [1, 2, 3, 4], "ratio": [1.5, float("nan"), float("inf"), -1.0]})
    dataset_id = add_dataset(pg_new_uow(), storage, source, tmp_path)
    export = submit(pg_new_uow, dataset_id, "m", ExportMode.append)
    loader = PostgresTableLoader({"warehouse": target})

    assert run(pg_new_uow, storage, loader, export.id, tmp_path) == "completed"

    # PostgreSQL orders NaN above every number: the CHECK refuses NaN and Infinity.
    assert query(target, "SELECT id FROM m ORDER BY id") == [(1,), (4,)]
    with pg_new_uow() as uow:
        failed = uow.exports.list_failed_rows(principal(), export.id)
    assert [f.values for f in failed] == [{"id": 2, "ratio": "NaN"}, {"id": 3, "ratio": "Infinity"}]
