"""Schedule use cases over fakes, with a frozen clock passed as `now`."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

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
from schemas.domain.schedules import RunOutcome, Schedule, ScheduleAction
from schemas.domain.webhooks import Webhook, WebhookEvent
from tests.fakes import FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.errors import InvalidParams, NotFound
from use_cases.schedules import (
    create_schedule,
    next_due,
    run_due_schedules,
    run_schedule_now,
    update_schedule,
)

ME = Principal(owner_id="default", scope=KeyScope.write)
THEM = Principal(owner_id="mallory", scope=KeyScope.write)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
METRICS = [{"processor": "metrics", "params": {}}]
URL = "https://data.example.com/daily.csv"


def add_dataset(uow: FakeUnitOfWork, owner: str = "default", **changes: object) -> Dataset:
    dataset = Dataset(
        id=new_id(),
        owner_id=owner,
        name="d",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=10,
        sha256="a" * 64,
        storage_key="k",
        columns=[ColumnInfo(name="x", type="float", null_count=0)],
        created_at=T0,
        updated_at=T0,
    ).model_copy(update=changes)
    uow.datasets.add(dataset)
    return dataset


def make(uow: FakeUnitOfWork, action: ScheduleAction, **timing: object):
    args: dict = {"cron": None, "interval_seconds": None, "timezone": "UTC", "enabled": True}
    args.update(timing)
    return create_schedule(uow, ME, name="daily", action=action, now=T0, **args)


def test_interval_schedule_runs_once_per_due_time_and_the_job_is_published() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    schedule = make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), interval_seconds=60)
    assert schedule.next_run_at == T0 + timedelta(seconds=60)
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=59)) == 0
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=61)) == 1
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=61)) == 0  # same tick again
    runs = uow.schedules.list_runs(ME, schedule.id)
    assert [r.due_at for r in runs] == [T0 + timedelta(seconds=60)]
    assert runs[0].outcome == RunOutcome.submitted and runs[0].job_status == "queued"
    assert queue.jobs == [runs[0].job_id]
    # A tick late by a couple of due times (not a downtime) runs each of them.
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=180)) == 2


def test_downtime_gives_one_catch_up_run_for_the_latest_missed_due_time() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    schedule = make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), cron="*/5 * * * *")
    later = T0 + timedelta(hours=3, minutes=2)  # 36 due times were missed
    assert run_due_schedules(uow, queue, later) == 1
    runs = uow.schedules.list_runs(ME, schedule.id)
    assert [r.due_at for r in runs] == [T0 + timedelta(hours=3)]
    assert uow.schedules.rows[schedule.id].next_run_at == T0 + timedelta(hours=3, minutes=5)


def test_cron_follows_the_timezone_across_dst() -> None:
    uow = FakeUnitOfWork()
    dataset = add_dataset(uow)
    action = ScheduleAction(dataset_id=dataset.id, steps=METRICS)
    berlin = make(uow, action, cron="0 6 * * *", timezone="Europe/Berlin")
    start = datetime(2026, 3, 27, 12, tzinfo=UTC)
    due = [next_due(berlin, start)]
    for _ in range(2):
        due.append(next_due(berlin, due[-1]))
    local = [d.astimezone(ZoneInfo("Europe/Berlin")) for d in due]
    assert [(d.hour, d.minute) for d in local] == [(6, 0)] * 3  # 06:00 local before and after
    assert [d.hour for d in due] == [5, 4, 4]  # i.e. 05:00 UTC, then 04:00 UTC (summer time)
    # A fixed 02:30 runs once on the night the clocks go back (02:30 happens twice).
    night = make(uow, action, cron="30 2 * * *", timezone="Europe/Berlin")
    first = next_due(night, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert next_due(night, first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": "0 0 1 1 * 0 2030"}, "cron"),  # croniter's seconds and year fields
        ({"cron": "0 0 1 1 * 0"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),  # valid fields, but no such day ever
        ({}, "cron"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_bad_timing_names_the_field(timing: dict, field: str) -> None:
    uow = FakeUnitOfWork()
    dataset = add_dataset(uow)
    with pytest.raises(InvalidParams) as error:
        make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), **timing)
    assert error.value.details["field"] == field


def test_steps_are_checked_like_a_job_submission() -> None:
    uow = FakeUnitOfWork()
    dataset = add_dataset(uow)
    bad = [{"processor": "anomalies", "params": {"columns": ["nope"]}}]
    with pytest.raises(InvalidParams) as error:
        make(uow, ScheduleAction(dataset_id=dataset.id, steps=bad), interval_seconds=60)
    assert error.value.details["field"].startswith("action.steps[0]")
    with pytest.raises(InvalidParams):
        make(
            uow,
            ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "nope"}]),
            cron="* * * * *",
        )
    theirs = add_dataset(uow, owner="mallory")
    with pytest.raises(NotFound):
        make(uow, ScheduleAction(dataset_id=theirs.id, steps=METRICS), interval_seconds=60)


def test_pause_and_resume_and_another_owner_sees_nothing() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    schedule = make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), interval_seconds=60)
    paused = update_schedule(uow, ME, schedule.id, {"enabled": False}, now=T0)
    assert paused.next_run_at is None
    assert run_due_schedules(uow, queue, T0 + timedelta(hours=1)) == 0
    resumed = update_schedule(uow, ME, schedule.id, {"enabled": True}, now=T0 + timedelta(hours=1))
    assert resumed.next_run_at == T0 + timedelta(hours=1, seconds=60)
    with pytest.raises(NotFound):
        update_schedule(uow, THEM, schedule.id, {"enabled": False}, now=T0)
    with pytest.raises(NotFound):
        run_schedule_now(uow, queue, THEM, schedule.id, now=T0)
    assert uow.schedules.list_runs(THEM, schedule.id) == []


def test_run_now_does_not_move_the_clock() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    schedule = make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), interval_seconds=60)
    run = run_schedule_now(uow, queue, ME, schedule.id, now=T0 + timedelta(seconds=1))
    assert run.manual and run.outcome == RunOutcome.submitted and queue.jobs == [run.job_id]
    assert uow.schedules.rows[schedule.id].next_run_at == schedule.next_run_at


def test_a_deleted_dataset_is_recorded_as_a_failed_run() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    schedule = make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), interval_seconds=60)
    uow.datasets.delete(dataset.id)
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=60)) == 1
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.outcome == RunOutcome.failed and "not found" in (run.message or "")


def finish_import(uow: FakeUnitOfWork, dataset_id, sha: str) -> None:
    uow.datasets._set(
        dataset_id,
        status=DatasetStatus.ready,
        sha256=sha,
        size_bytes=10,
        columns=[ColumnInfo(name="x", type="float", null_count=0)],
    )


def test_source_url_imports_versions_and_skips_an_unchanged_file() -> None:
    uow, queue, storage = FakeUnitOfWork(), FakeQueue(), FakeStorage()
    action = ScheduleAction(source_url=URL, format="csv", steps=METRICS)
    schedule = make(uow, action, interval_seconds=60)
    shas = ["1" * 64, "1" * 64, "2" * 64]
    for i, sha in enumerate(shas, start=1):
        now = T0 + timedelta(seconds=60 * i)
        assert run_due_schedules(uow, queue, now, storage=storage) == 1
        finish_import(uow, queue.imports[-1], sha)  # a worker downloaded and validated it
        run_due_schedules(uow, queue, now + timedelta(seconds=1), storage=storage)
    runs = list(reversed(uow.schedules.list_runs(ME, schedule.id)))
    assert [r.outcome for r in runs] == [
        RunOutcome.submitted,
        RunOutcome.unchanged,
        RunOutcome.submitted,
    ]
    assert [r.version for r in runs] == [1, None, 2]
    assert runs[1].dataset_id == runs[0].dataset_id  # the unchanged run points at version 1
    assert queue.imports[1] not in uow.datasets.rows  # its duplicate copy was deleted
    assert [j.dataset_id for j in uow.jobs.rows.values()] == [
        runs[0].dataset_id,
        runs[2].dataset_id,
    ]
    versions = {d: v for d, (_, v) in uow.schedules.versions.items() if d in uow.datasets.rows}
    assert sorted(versions.values()) == [1, 2]
    assert {uow.datasets.rows[d].source_url for d in versions} == {URL}


def test_a_full_quota_is_recorded_as_a_refused_run() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    add_dataset(uow, size_bytes=1000)
    action = ScheduleAction(source_url=URL, format="csv", steps=METRICS)
    schedule = make(uow, action, interval_seconds=60)
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=60), quota_bytes=1000) == 1
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.outcome == RunOutcome.refused_quota and "quota" in (run.message or "")
    assert queue.imports == []


def test_a_failed_import_fails_the_run() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    schedule = make(
        uow, ScheduleAction(source_url=URL, format="csv", steps=METRICS), interval_seconds=60
    )
    run_due_schedules(uow, queue, T0 + timedelta(seconds=60))
    uow.datasets._set(queue.imports[0], status=DatasetStatus.failed, error="HTTP 404")
    run_due_schedules(uow, queue, T0 + timedelta(seconds=61))
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.outcome == RunOutcome.failed and run.message == "HTTP 404"


def test_an_export_waits_for_the_job_and_is_skipped_when_it_fails() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    export = {"artifact": None, "destination": "warehouse", "table": "daily", "mode": "append"}
    action = ScheduleAction(dataset_id=dataset.id, steps=METRICS, export=export)
    schedule = create_schedule(
        uow,
        ME,
        name="s",
        cron=None,
        interval_seconds=60,
        timezone="UTC",
        enabled=True,
        action=action,
        now=T0,
        destinations=["warehouse"],
    )
    run_due_schedules(uow, queue, T0 + timedelta(seconds=60))
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.export_state == "waiting" and run.export == export
    assert run.job_id is not None
    uow.jobs._set(run.job_id, status=JobStatus.failed)
    run_due_schedules(uow, queue, T0 + timedelta(seconds=61))
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.export_state == "skipped: job failed"
    with pytest.raises(InvalidParams) as error:  # an unknown destination is refused up front
        create_schedule(
            uow,
            ME,
            name="s",
            cron=None,
            interval_seconds=60,
            timezone="UTC",
            enabled=True,
            action=action,
            now=T0,
            destinations=["other"],
        )
    assert error.value.details["field"] == "action.export.destination"


def test_a_clock_jump_back_and_a_restarted_tick_never_repeat_a_due_time() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = add_dataset(uow)
    schedule = make(uow, ScheduleAction(dataset_id=dataset.id, steps=METRICS), interval_seconds=60)
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=60)) == 1
    # A beat whose clock went back re-evaluates an old instant: nothing is due for it.
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=30)) == 0
    # A beat that died after its commit but before moving on: the next tick sees the due time
    # taken (the run row is unique) even if next_run_at was not advanced.
    uow.schedules.rows[schedule.id] = uow.schedules.rows[schedule.id].model_copy(
        update={"next_run_at": T0 + timedelta(seconds=60)}
    )
    assert run_due_schedules(uow, queue, T0 + timedelta(seconds=61)) == 0
    assert uow.schedules.rows[schedule.id].next_run_at == T0 + timedelta(seconds=120)
    assert len(uow.schedules.list_runs(ME, schedule.id)) == 1 and len(queue.jobs) == 1


def broken_schedule(uow: FakeUnitOfWork, owner: str, dataset_id, cron: str) -> Schedule:
    """A schedule saved before its cron was checked: its next due time cannot be computed."""
    schedule = Schedule(
        id=new_id(),
        owner_id=owner,
        name="legacy",
        cron=cron,
        interval_seconds=None,
        timezone="UTC",
        enabled=True,
        action=ScheduleAction(dataset_id=dataset_id, steps=METRICS),
        next_run_at=T0 - timedelta(days=30),  # the most overdue: first in list_due
        created_at=T0 - timedelta(days=60),
        updated_at=T0 - timedelta(days=60),
    )
    uow.schedules.add(schedule)
    return schedule


@pytest.mark.parametrize("cron", ["0 0 1 1 * 0 2026", "0 0 31 2 *"])
def test_a_schedule_without_a_next_due_time_is_disabled_and_blocks_nobody(cron: str) -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    theirs = broken_schedule(uow, "mallory", add_dataset(uow, owner="mallory").id, cron)
    mine = make(
        uow, ScheduleAction(dataset_id=add_dataset(uow).id, steps=METRICS), interval_seconds=60
    )
    for i in range(1, 4):  # one schedule per tick: the broken one must not hold the slot
        run_due_schedules(uow, queue, T0 + timedelta(seconds=60 * i), limit=1)
    assert len(uow.schedules.list_runs(ME, mine.id)) >= 2
    stopped = uow.schedules.rows[theirs.id]
    assert stopped.enabled is False and stopped.next_run_at is None
    (run,) = uow.schedules.list_runs(THEM, theirs.id)
    assert run.outcome == RunOutcome.failed and "cron" in (run.message or "")


def test_a_run_whose_imported_dataset_was_deleted_fails_and_is_announced() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    now = T0
    uow.webhooks.add(
        Webhook(
            id=new_id(),
            owner_id=ME.owner_id,
            url="https://hooks.example.com/a",
            events=[WebhookEvent.schedule_run],
            secret="s" * 32,
            created_at=now,
        )
    )
    action = ScheduleAction(source_url=URL, format="csv", steps=METRICS)
    schedule = make(uow, action, interval_seconds=60)
    run_due_schedules(uow, queue, T0 + timedelta(seconds=60))
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    uow.datasets.delete(queue.imports[0])
    assert run.id is not None
    uow.schedules.update_run(run.id, dataset_id=None)  # what ON DELETE SET NULL does
    run_due_schedules(uow, queue, T0 + timedelta(seconds=61))
    (run,) = uow.schedules.list_runs(ME, schedule.id)
    assert run.outcome == RunOutcome.failed and run.message == "the imported dataset was deleted"
    assert uow.schedules.list_unsettled_runs() == []
    (sent,) = uow.webhook_deliveries.rows.values()
    assert sent.event == WebhookEvent.schedule_run and sent.payload["outcome"] == "failed"
