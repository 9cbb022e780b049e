"""Schedules on SQLite and PostgreSQL: one run per due time, also with concurrent ticks."""

import threading
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from db.engine import make_engine
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.records import (
    ColumnInfo,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    JobStatus,
    KeyScope,
    Principal,
)
from schemas.domain.schedules import RunOutcome, ScheduleAction
from tests.fakes import FakeQueue, FakeStorage
from use_cases.schedules import create_schedule, run_due_schedules, run_schedule_now

ME = Principal(owner_id="default", scope=KeyScope.write)
THEM = Principal(owner_id="mallory", scope=KeyScope.write)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://data.example.com/daily.csv"


def add_dataset(uow: SqlUnitOfWork) -> Dataset:
    dataset = Dataset(
        id=new_id(),
        owner_id=ME.owner_id,
        name="d",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=1,
        sha256="a" * 64,
        storage_key="k",
        columns=[ColumnInfo(name="x", type="float", null_count=0)],
        created_at=T0,
        updated_at=T0,
    )
    with uow:
        uow.datasets.add(dataset)
        uow.commit()
    return dataset


def every_second(uow: SqlUnitOfWork, action: ScheduleAction):
    return create_schedule(
        uow,
        ME,
        name="s",
        cron=None,
        interval_seconds=1,
        timezone="UTC",
        enabled=True,
        action=action,
        now=T0,
    )


def test_runs_are_unique_per_due_time_and_owner_scoped(uow: SqlUnitOfWork) -> None:
    dataset = add_dataset(uow)
    schedule = every_second(
        uow, ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "metrics"}])
    )
    queue = FakeQueue()
    for second in (1, 2, 3):  # each tick twice: the second finds the due time taken
        now = T0 + timedelta(seconds=second)
        assert run_due_schedules(uow, queue, now) == 1
        assert run_due_schedules(uow, queue, now) == 0
    with uow:
        runs = uow.schedules.list_runs(ME, schedule.id)
        assert uow.schedules.list_runs(THEM, schedule.id) == []
        assert uow.schedules.get(schedule.id, THEM) is None
        again = uow.schedules.add_run(runs[0].model_copy(update={"id": None}))
    assert again is None
    assert [r.due_at for r in runs] == [T0 + timedelta(seconds=s) for s in (3, 2, 1)]
    assert all(r.outcome == RunOutcome.submitted and r.job_status == "queued" for r in runs)
    assert len(set(queue.jobs)) == 3
    manual = run_schedule_now(uow, queue, ME, schedule.id, now=T0 + timedelta(seconds=3.5))
    assert manual.manual and manual.job_id is not None


def test_source_versions_are_numbered(uow: SqlUnitOfWork) -> None:
    action = ScheduleAction(source_url=URL, format="csv", steps=[{"processor": "metrics"}])
    schedule = every_second(uow, action)
    queue = FakeQueue()
    run_due_schedules(uow, queue, T0 + timedelta(seconds=1))
    run_due_schedules(uow, queue, T0 + timedelta(seconds=2))
    with uow:
        runs = uow.schedules.list_runs(ME, schedule.id)
        datasets = [uow.datasets.get(d, ME) for d in queue.imports]
    assert [r.version for r in runs] == [2, 1]
    assert [r.outcome for r in runs] == [RunOutcome.importing] * 2
    assert all(d is not None and d.source_url == URL for d in datasets)
    # Both downloads ended with the same bytes: the second run is skipped, its copy deleted.
    with uow:
        for dataset_id in queue.imports:
            uow.datasets.transition(dataset_id, [DatasetStatus.uploaded], DatasetStatus.validating)
            uow.datasets.transition(
                dataset_id, [DatasetStatus.validating], DatasetStatus.ready, sha256="b" * 64
            )
        uow.commit()
    run_due_schedules(
        uow, queue, T0 + timedelta(seconds=2, milliseconds=500), storage=FakeStorage()
    )
    with uow:
        first, second = reversed(uow.schedules.list_runs(ME, schedule.id))
        assert uow.datasets.get(queue.imports[1], ME) is None
    assert (first.outcome, second.outcome) == (RunOutcome.submitted, RunOutcome.unchanged)
    assert second.dataset_id == first.dataset_id == queue.imports[0]


@pytest.mark.postgres
def test_two_concurrent_ticks_make_exactly_one_run_per_due_time(postgres_migrated_url: str) -> None:
    from tests.fixtures.databases import _empty_postgres_tables

    _empty_postgres_tables(postgres_migrated_url)
    engine = make_engine(postgres_migrated_url)
    try:
        setup = SqlUnitOfWork(engine)
        dataset = add_dataset(setup)
        action = ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "metrics"}])
        schedules = [every_second(setup, action) for _ in range(5)]
        queues = [FakeQueue(), FakeQueue()]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def beat(queue: FakeQueue) -> None:
            uow = SqlUnitOfWork(engine)
            try:
                for second in range(1, 31):
                    barrier.wait()  # both beats tick the same instant
                    run_due_schedules(uow, queue, T0 + timedelta(seconds=second))
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=beat, args=(q,)) for q in queues]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with setup:
            for schedule in schedules:
                runs = setup.schedules.list_runs(ME, schedule.id, limit=100)
                due = sorted(r.due_at for r in runs)
                assert due == [T0 + timedelta(seconds=s) for s in range(1, 31)]
        jobs = queues[0].jobs + queues[1].jobs
        assert len(jobs) == len(set(jobs)) == 5 * 30  # every job published once
    finally:
        engine.dispose()


def test_a_completed_job_hands_its_export_over_once(uow: SqlUnitOfWork) -> None:
    dataset = add_dataset(uow)
    with uow:
        uow.datasets.update(dataset.id, parquet_key=f"datasets/{dataset.id}/data.parquet")
        uow.commit()
    export = {"artifact": None, "destination": "warehouse", "table": "daily", "mode": "append"}
    action = ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "metrics"}], export=export)
    schedule = every_second(uow, action)
    queue = FakeQueue()
    run_due_schedules(uow, queue, T0 + timedelta(seconds=1), destinations=["warehouse"])
    with uow:
        (run,) = uow.schedules.list_runs(ME, schedule.id)
        assert run.export_state == "waiting" and run.job_id is not None
        uow.jobs.claim(run.job_id, "w", T0)
        uow.jobs.transition(run.job_id, [JobStatus.running], JobStatus.completed)
        uow.commit()
    for _ in range(2):  # settled once: the second tick finds nothing waiting
        run_due_schedules(uow, queue, T0 + timedelta(seconds=1.5), destinations=["warehouse"])
    with uow:
        (run,) = uow.schedules.list_runs(ME, schedule.id)
        assert run.export_state == "submitted"
        assert run.export is not None
        exported = uow.exports.get(UUID(run.export["export_id"]), ME)
    assert exported is not None and exported.dataset_id == dataset.id
    assert (exported.destination, exported.table_name) == ("warehouse", "daily")
    assert queue.exports == [exported.id]


def test_a_deleted_import_fails_its_run_and_settling_goes_on(uow: SqlUnitOfWork) -> None:
    action = ScheduleAction(source_url=URL, format="csv", steps=[{"processor": "metrics"}])
    schedule = every_second(uow, action)
    queue = FakeQueue()
    run_due_schedules(uow, queue, T0 + timedelta(seconds=1))
    with uow:
        uow.datasets.delete(queue.imports[0])  # the owner deleted the version mid-import
        uow.commit()
        (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.dataset_id is None  # ON DELETE SET NULL
    run_due_schedules(uow, queue, T0 + timedelta(seconds=1.5))
    with uow:
        (run,) = uow.schedules.list_runs(ME, schedule.id)
        assert uow.schedules.list_unsettled_runs() == []
        assert uow.schedules.get_for_worker(schedule.id) == uow.schedules.get(schedule.id, ME)
    assert (run.outcome, run.message) == (RunOutcome.failed, "the imported dataset was deleted")


def test_a_cron_without_a_next_due_time_is_paused_and_blocks_nobody(uow: SqlUnitOfWork) -> None:
    dataset = add_dataset(uow)
    action = ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "metrics"}])
    broken, mine = every_second(uow, action), every_second(uow, action)
    with uow:  # saved before crons were checked: a year field whose last year has passed
        uow.schedules.update(broken.id, cron="0 0 1 1 * 0 2025", interval_seconds=None)
        uow.schedules.advance(broken.id, None)
        uow.schedules.advance(broken.id, T0 - timedelta(days=1))
        uow.commit()
    queue = FakeQueue()
    for second in (1, 2, 3):  # one schedule per tick: the broken one must not keep the slot
        run_due_schedules(uow, queue, T0 + timedelta(seconds=second), limit=1)
    with uow:
        stopped = uow.schedules.get(broken.id, ME)
        (failed,) = uow.schedules.list_runs(ME, broken.id)
        due = sorted(r.due_at for r in uow.schedules.list_runs(ME, mine.id))
    assert due == [T0 + timedelta(seconds=s) for s in (1, 2, 3)]  # none of its due times lost
    assert stopped is not None and (stopped.enabled, stopped.next_run_at) == (False, None)
    assert failed.outcome == RunOutcome.failed and "2025" in (failed.message or "")
