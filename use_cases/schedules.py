"""Schedules: a job template run at cron or interval due times, evaluated by `assay beat`.

Each due time gets one `schedule_runs` row, unique on (schedule, due time): the row and the job
are written in one transaction (INSERT ... ON CONFLICT DO NOTHING), the job is published after
commit. So two beats, a beat restarted mid-tick or a clock jump never run a due time twice;
PostgreSQL's FOR UPDATE SKIP LOCKED spares the second beat the work. When the schedule is behind
by more than MISSED_AFTER_S (everything was down), only the latest missed due time runs.

Cron expressions are read in the schedule's timezone: a time that a DST change skips runs at
the first time after the gap, and a fixed-hour time that the change repeats runs once (its first
occurrence); expressions whose hour field is `*` keep their real-time rhythm.

A source_url schedule imports a new version of its dataset each run; the next tick compares the
version's sha256 with the previous ready version's: equal -> `skipped: unchanged` (the duplicate
version is deleted), else the job is created on it.
"""

import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from ports.fetcher import UrlFetcher
from ports.queue import TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from schemas.domain.exports import ExportMode
from schemas.domain.ids import new_id
from schemas.domain.records import (
    Dataset,
    DatasetFormat,
    DatasetStatus,
    Job,
    JobStatus,
    JobStep,
    KeyScope,
    Principal,
)
from schemas.domain.schedules import (
    EXPORT_WAITING,
    RunOutcome,
    Schedule,
    ScheduleAction,
    ScheduleRun,
)
from schemas.domain.webhooks import WebhookEvent
from use_cases.datasets import delete_dataset, original_key, publish_import
from use_cases.errors import InvalidInput, InvalidParams, NotFound, QuotaExceeded, UseCaseError
from use_cases.exports import ExportSource, check_table_name, submit_export
from use_cases.imports import check_import_url
from use_cases.jobs import check_steps, publish_job, release_waiting_jobs
from use_cases.lifecycle import create_job
from use_cases.quotas import quota_exceeded
from use_cases.webhooks import announce

log = logging.getLogger(__name__)

# A schedule this far behind its next due time missed runs (nothing evaluated it): one catch-up.
MISSED_AFTER_S = 60.0
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 366 * 24 * 3600


# --- timing -----------------------------------------------------------------------------------


def check_timing(
    cron: str | None, interval_seconds: int | None, timezone: str, now: datetime | None = None
) -> None:
    """InvalidParams naming the field unless exactly one of cron / interval_seconds is valid and
    the timezone is an IANA name; a cron needs 5 fields and a due time after `now`."""
    if (cron is None) == (interval_seconds is None):
        raise InvalidParams("give exactly one of `cron` and `interval_seconds`", {"field": "cron"})
    if interval_seconds is not None and not MIN_INTERVAL_S <= interval_seconds <= MAX_INTERVAL_S:
        raise InvalidParams(
            f"interval_seconds must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S}",
            {"field": "interval_seconds"},
        )
    tz = zone(timezone)
    if cron is None:
        return
    # croniter also takes a 6th (seconds) and 7th (year) field; a year ends its due times.
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidParams(
            f"cron: {cron!r} is not a valid cron expression (5 fields: minute hour "
            "day-of-month month day-of-week, e.g. '0 6 * * *')",
            {"field": "cron", "cron": cron},
        )
    try:
        croniter(cron, (now or datetime.now(UTC)).astimezone(tz)).get_next(datetime)
    except (CroniterError, ValueError, OverflowError):  # e.g. '0 0 31 2 *': no such day
        raise InvalidParams(
            f"cron: {cron!r} never matches a date (e.g. day 31 of a 30-day month)",
            {"field": "cron", "cron": cron},
        ) from None


def zone(name: str) -> ZoneInfo:
    """The IANA timezone `name`; InvalidParams naming `timezone` when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParams(
            f"timezone: {name!r} is not a known IANA timezone (e.g. 'Europe/Berlin', 'UTC')",
            {"field": "timezone", "timezone": name},
        ) from None


def next_due(schedule: Schedule, after: datetime) -> datetime:
    """The schedule's first due time strictly after `after` (UTC)."""
    if schedule.interval_seconds is not None:
        step = timedelta(seconds=schedule.interval_seconds)
        anchor = schedule.created_at
        if after < anchor:
            return anchor + step
        return anchor + step * ((after - anchor) // step + 1)
    assert schedule.cron is not None
    tz = ZoneInfo(schedule.timezone)
    it = croniter(schedule.cron, after.astimezone(tz))
    while True:
        due = it.get_next(datetime).astimezone(UTC)
        if not _repeated_fixed_time(schedule, due):
            return due


def latest_due(schedule: Schedule, at_or_before: datetime) -> datetime:
    """The schedule's last due time at or before the given time (UTC)."""
    if schedule.interval_seconds is not None:
        step = timedelta(seconds=schedule.interval_seconds)
        anchor = schedule.created_at
        return anchor + step * max((at_or_before - anchor) // step, 1)
    assert schedule.cron is not None
    tz = ZoneInfo(schedule.timezone)
    it = croniter(schedule.cron, (at_or_before + timedelta(microseconds=1)).astimezone(tz))
    while True:
        due = it.get_prev(datetime).astimezone(UTC)
        if not _repeated_fixed_time(schedule, due):
            return due


def _repeated_fixed_time(schedule: Schedule, due: datetime) -> bool:
    """The second occurrence of a wall-clock time that a DST change repeats, for an expression
    with a fixed hour (a daily 02:30 runs once that night)."""
    fields = (schedule.cron or "").split()
    fixed_hour = len(fields) < 5 or not fields[1].startswith("*")
    return fixed_hour and due.astimezone(ZoneInfo(schedule.timezone)).fold == 1


# --- managing schedules -------------------------------------------------------------------------


def check_action(
    uow: UnitOfWork,
    fetcher: UrlFetcher | None,
    principal: Principal,
    action: ScheduleAction,
    destinations: Collection[str] | None = None,
) -> ScheduleAction:
    """The action with its steps checked as a job submission checks them (against the dataset's
    columns when it is ready) and its export's target as an export checks it (`destinations`:
    the configured names); NotFound for a dataset that is not the principal's."""
    if action.export is not None:
        _check_export(action.export, destinations)
    if (action.dataset_id is None) == (action.source_url is None):
        raise InvalidParams(
            "the action needs exactly one of `dataset_id` and `source_url`", {"field": "action"}
        )
    steps = [JobStep.model_validate(s) for s in action.steps]
    columns = None
    if action.dataset_id is not None:
        with uow:
            dataset = uow.datasets.get(action.dataset_id, principal)
        if dataset is None:
            raise NotFound(
                f"dataset {action.dataset_id} not found", {"dataset_id": str(action.dataset_id)}
            )
        columns = dataset.columns if dataset.status == DatasetStatus.ready else None
    else:
        assert action.source_url is not None
        if fetcher is not None:
            check_import_url(fetcher, action.source_url)
    try:
        checked = check_steps(steps, columns)
    except InvalidParams as exc:  # the same error, its field path under the action
        field = exc.details.get("field")
        raise InvalidParams(exc.message, {**exc.details, "field": f"action.{field}"}) from None
    return action.model_copy(update={"steps": [s.model_dump() for s in checked]})


def _check_export(export: dict[str, Any], destinations: Collection[str] | None) -> None:
    """InvalidParams naming `action.export.<field>` for an unknown destination or bad table."""
    destination = export.get("destination")
    if destinations is not None and destination not in destinations:
        raise InvalidParams(
            f"unknown destination {destination!r}; configured: {sorted(destinations)}",
            {"field": "action.export.destination", "destination": destination},
        )
    try:
        check_table_name(str(export.get("table")))
    except InvalidInput as exc:
        raise InvalidParams(exc.message, {**exc.details, "field": "action.export.table"}) from None


def create_schedule(
    uow: UnitOfWork,
    principal: Principal,
    *,
    name: str,
    cron: str | None,
    interval_seconds: int | None,
    timezone: str,
    enabled: bool,
    action: ScheduleAction,
    now: datetime,
    fetcher: UrlFetcher | None = None,
    destinations: Collection[str] | None = None,
) -> Schedule:
    """Record a schedule of the principal after checking its timing and its action."""
    check_timing(cron, interval_seconds, timezone, now)
    action = check_action(uow, fetcher, principal, action, destinations)
    schedule = Schedule(
        id=new_id(),
        owner_id=principal.owner_id,
        name=name,
        cron=cron,
        interval_seconds=interval_seconds,
        timezone=timezone,
        enabled=enabled,
        action=action,
        created_at=now,
        updated_at=now,
    )
    schedule.next_run_at = next_due(schedule, now) if enabled else None
    with uow:
        uow.schedules.add(schedule)
        uow.commit()
    return schedule


def get_schedule(uow: UnitOfWork, principal: Principal, schedule_id: UUID) -> Schedule:
    """One of the principal's schedules; NotFound for another owner's."""
    with uow:
        schedule = uow.schedules.get(schedule_id, principal)
    if schedule is None:
        raise NotFound(f"schedule {schedule_id} not found", {"schedule_id": str(schedule_id)})
    return schedule


def update_schedule(
    uow: UnitOfWork,
    principal: Principal,
    schedule_id: UUID,
    changes: dict[str, Any],
    *,
    now: datetime,
    fetcher: UrlFetcher | None = None,
    destinations: Collection[str] | None = None,
) -> Schedule:
    """Change a schedule (name, timing, enabled, action); pausing clears next_run_at, resuming
    or a new timing sets it from now on (runs missed while paused are not made up)."""
    current = get_schedule(uow, principal, schedule_id)
    if "cron" in changes and changes["cron"] is not None:
        changes.setdefault("interval_seconds", None)
    if "interval_seconds" in changes and changes["interval_seconds"] is not None:
        changes.setdefault("cron", None)
    if "action" in changes:
        changes["action"] = check_action(uow, fetcher, principal, changes["action"], destinations)
    updated = current.model_copy(update=changes)
    check_timing(updated.cron, updated.interval_seconds, updated.timezone, now)
    timing = {"cron", "interval_seconds", "timezone", "enabled"}
    if timing & changes.keys():
        updated.next_run_at = next_due(updated, now) if updated.enabled else None
    values = {k: getattr(updated, k) for k in (*changes.keys(), "next_run_at")}
    with uow:
        uow.schedules.update(schedule_id, **values)
        uow.commit()
    return get_schedule(uow, principal, schedule_id)


def delete_schedule(uow: UnitOfWork, principal: Principal, schedule_id: UUID) -> None:
    """Delete a schedule and its run history (the jobs and datasets it made stay)."""
    get_schedule(uow, principal, schedule_id)
    with uow:
        uow.schedules.delete(schedule_id)
        uow.commit()


# --- running ----------------------------------------------------------------------------------


def run_schedule_now(
    uow: UnitOfWork,
    queue: TaskQueue,
    principal: Principal,
    schedule_id: UUID,
    *,
    now: datetime,
    quota_bytes: int = 0,
) -> ScheduleRun:
    """Run one of the principal's schedules once now (paused or not); its clock is untouched."""
    with uow:
        schedule = uow.schedules.get(schedule_id, principal)
        if schedule is None:
            raise NotFound(f"schedule {schedule_id} not found", {"schedule_id": str(schedule_id)})
        run, publish = _start_run(uow, schedule, now, manual=True, quota_bytes=quota_bytes)
        uow.commit()
    _publish(uow, queue, publish)
    assert run is not None  # `now` has microseconds: no cron or interval time collides
    return run


def run_due_schedules(
    uow: UnitOfWork,
    queue: TaskQueue,
    now: datetime,
    *,
    quota_bytes: int = 0,
    storage: ObjectStorage | None = None,
    destinations: Collection[str] = (),
    limit: int = 100,
) -> int:
    """One tick of `assay beat`: start a run for every due time reached, then settle the runs
    waiting on an import; returns how many runs this call started."""
    started = 0
    with uow:
        due_ids = uow.schedules.list_due(now, limit)
    for schedule_id in due_ids:
        try:
            started += _run_due(uow, queue, schedule_id, now, quota_bytes)
        except Exception:  # one broken schedule must not stop the others
            log.exception("schedule %s: evaluation failed", schedule_id)
    settle_runs(uow, queue, storage, destinations)
    return started


def _run_due(
    uow: UnitOfWork, queue: TaskQueue, schedule_id: UUID, now: datetime, quota_bytes: int
) -> int:
    started = 0
    for _ in range(100):  # a tick late by a few due times runs each of them; bounded
        publish: list[tuple[str, UUID]] = []
        with uow:
            schedule = uow.schedules.lock_due(schedule_id, now)
            if schedule is None or schedule.next_run_at is None:
                return started  # not due any more, or another beat is on it
            due = schedule.next_run_at
            try:
                if due < now - timedelta(seconds=MISSED_AFTER_S):
                    due = latest_due(schedule, now)  # down for a while: one catch-up run
                following = next_due(schedule, due)
            except (CroniterError, ValueError, OverflowError) as exc:
                # Saved before crons were checked (a year field, no such day): it would stay due
                # and first in line for ever, so it is paused with a failed run saying why.
                _stop(uow, schedule, due, f"cron {schedule.cron!r} has no next due time ({exc})")
                uow.commit()
                return started
            run, publish = _start_run(uow, schedule, due, manual=False, quota_bytes=quota_bytes)
            uow.schedules.advance(schedule_id, following)
            uow.commit()
        _publish(uow, queue, publish)
        started += run is not None
    return started


def _stop(uow: UnitOfWork, schedule: Schedule, due: datetime, reason: str) -> None:
    """Inside the caller's transaction: pause the schedule and record a failed run of `due`."""
    uow.schedules.update(schedule.id, enabled=False, next_run_at=None)
    now = datetime.now(UTC)
    export = schedule.action.export
    run = ScheduleRun(
        schedule_id=schedule.id,
        due_at=due,
        manual=False,
        outcome=RunOutcome.failed,
        message=reason,
        export=export,
        export_state=EXPORT_WAITING if export is not None else None,
        created_at=now,
        updated_at=now,
    )
    added = uow.schedules.add_run(run)
    if added is not None:
        message = f"{reason}; the schedule was paused"
        _ended(uow, added, RunOutcome.failed, message, schedule.owner_id)


def _start_run(
    uow: UnitOfWork, schedule: Schedule, due: datetime, *, manual: bool, quota_bytes: int
) -> tuple[ScheduleRun | None, list[tuple[str, UUID]]]:
    """Inside the caller's transaction: record the run of `due` and what it starts; None when
    the due time has its run already. Returns what to publish after commit."""
    owner = Principal(owner_id=schedule.owner_id, scope=KeyScope.write)  # the owner's rights
    action = schedule.action
    run = ScheduleRun(
        schedule_id=schedule.id,
        due_at=due,
        manual=manual,
        outcome=RunOutcome.submitted,
        export=action.export,
        export_state=EXPORT_WAITING if action.export is not None else None,
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    if action.source_url is not None:
        run.outcome = RunOutcome.importing
        try:
            _check_room(uow, owner, quota_bytes)
        except QuotaExceeded as exc:
            refused = run.model_copy(
                update={"outcome": RunOutcome.refused_quota, "message": exc.message}
            )
            added = uow.schedules.add_run(refused)
            if added is not None:
                _announce(uow, schedule.owner_id, added)
            return added, []
        run.version = uow.schedules.next_version(schedule.id)
        added = uow.schedules.add_run(run)
        if added is None:
            return None, []
        assert added.id is not None
        dataset_id = new_id()
        fmt = DatasetFormat(action.format or "csv")
        uow.datasets.add(
            Dataset(
                id=dataset_id,
                owner_id=schedule.owner_id,
                name=schedule.name,
                format=fmt,
                status=DatasetStatus.uploaded,
                size_bytes=0,
                sha256="",
                storage_key=original_key(dataset_id, fmt),
                source_url=action.source_url,
                created_at=run.created_at,
                updated_at=run.created_at,
            )
        )
        uow.schedules.set_version(dataset_id, schedule.id, run.version)
        uow.schedules.update_run(added.id, dataset_id=dataset_id)
        return added.model_copy(update={"dataset_id": dataset_id}), [("import", dataset_id)]
    assert action.dataset_id is not None
    added = uow.schedules.add_run(run)
    if added is None:
        return None, []
    return _submit(uow, schedule, added, action.dataset_id, owner)


def _check_room(uow: UnitOfWork, owner: Principal, quota_bytes: int) -> None:
    """QuotaExceeded when the owner's storage quota is full (an import needs at least a byte)."""
    if quota_bytes <= 0:
        return
    used = uow.datasets.total_size_bytes(owner)
    if used + 1 > quota_bytes:
        raise quota_exceeded(owner, used=used, quota=quota_bytes, size=1)


def _submit(
    uow: UnitOfWork, schedule: Schedule, run: ScheduleRun, dataset_id: UUID, owner: Principal
) -> tuple[ScheduleRun, list[tuple[str, UUID]]]:
    """Create the run's job on the dataset (in the caller's transaction), or record why not."""
    assert run.id is not None
    dataset = uow.datasets.get(dataset_id, owner)
    if dataset is None or dataset.status == DatasetStatus.failed:
        reason = "not found" if dataset is None else f"failed validation: {dataset.error}"
        failed = f"dataset {dataset_id} {reason}"
        return _ended(uow, run, RunOutcome.failed, failed, schedule.owner_id), []
    ready = dataset.status == DatasetStatus.ready
    steps = [JobStep.model_validate(s) for s in schedule.action.steps]
    try:
        checked = check_steps(steps, dataset.columns if ready else None)
    except InvalidParams as exc:  # the dataset's columns changed since the schedule was saved
        return _ended(uow, run, RunOutcome.failed, exc.message, schedule.owner_id), []
    job = Job(
        id=new_id(),
        owner_id=schedule.owner_id,
        dataset_id=dataset_id,
        name=schedule.name,
        status=JobStatus.queued,
        steps=checked,
        message="queued" if ready else "waiting for the dataset to be validated",
        created_at=run.created_at,
        updated_at=run.created_at,
    )
    create_job(uow, job)
    changes = {"job_id": job.id, "dataset_id": dataset_id, "outcome": RunOutcome.submitted}
    uow.schedules.update_run(run.id, **changes)
    done = run.model_copy(update=changes)
    _announce(uow, schedule.owner_id, done)
    return done, [("job" if ready else "waiting", job.id if ready else dataset_id)]


def _ended(
    uow: UnitOfWork,
    run: ScheduleRun,
    outcome: RunOutcome,
    message: str,
    owner_id: str | None = None,
) -> ScheduleRun:
    """Record a run that starts no job (its export, if any, is skipped with it), announced to
    the owner's webhooks when the owner is known."""
    assert run.id is not None
    changes: dict[str, Any] = {"outcome": outcome, "message": message}
    if run.export_state is not None:
        reason = outcome.value.removeprefix("skipped: ")  # "skipped: unchanged" is one already
        changes["export_state"] = f"skipped: {reason}"
    uow.schedules.update_run(run.id, **changes)
    ended = run.model_copy(update=changes)
    if owner_id is not None:
        _announce(uow, owner_id, ended)
    return ended


def _announce(uow: UnitOfWork, owner_id: str, run: ScheduleRun) -> None:
    """A run's outcome to the owner's `schedule.run` webhooks (in the run's transaction)."""
    data = {
        "schedule_id": str(run.schedule_id),
        "due_at": run.due_at.isoformat(),
        "manual": run.manual,
        "outcome": run.outcome.value,
        "message": run.message,
        "job_id": str(run.job_id) if run.job_id else None,
        "dataset_id": str(run.dataset_id) if run.dataset_id else None,
        "version": run.version,
        "links": {"runs": f"/api/v1/schedules/{run.schedule_id}/runs"},
    }
    announce(uow, owner_id, WebhookEvent.schedule_run, run.schedule_id, data)


def _publish(uow: UnitOfWork, queue: TaskQueue, items: list[tuple[str, UUID]]) -> None:
    """After commit: publish what the runs started (a lost message is the reaper's)."""
    for kind, item_id in items:
        if kind == "job":
            publish_job(uow, queue, item_id)
        elif kind == "waiting":
            release_waiting_jobs(uow, queue, item_id)
        else:
            publish_import(queue, item_id)


def settle_runs(
    uow: UnitOfWork,
    queue: TaskQueue,
    storage: ObjectStorage | None,
    destinations: Collection[str] = (),
) -> None:
    """Runs whose import finished: skip an unchanged version, else create the job; runs whose
    job completed hand their export over."""
    with uow:
        runs = uow.schedules.list_unsettled_runs()
    for run in runs:
        try:
            if run.outcome == RunOutcome.importing:
                _settle_import(uow, queue, storage, run)
            else:
                _hand_over_export(uow, queue, run, destinations)
        except Exception:
            log.exception("schedule run %s could not be settled", run.id)


def _settle_import(
    uow: UnitOfWork, queue: TaskQueue, storage: ObjectStorage | None, run: ScheduleRun
) -> None:
    assert run.id is not None and run.version is not None
    duplicate = None
    publish: list[tuple[str, UUID]] = []
    with uow:
        # Deleting the dataset clears the run's dataset_id (ON DELETE SET NULL).
        dataset = uow.datasets.get_for_worker(run.dataset_id) if run.dataset_id else None
        schedule = uow.schedules.get_for_worker(run.schedule_id)
        settled = (DatasetStatus.ready, DatasetStatus.failed)
        if dataset is not None and dataset.status not in settled:
            return  # still downloading or validating
        if not uow.schedules.update_run_if(run.id, {"outcome": RunOutcome.importing}):
            return  # another beat settled it (a concurrent one waited for its commit here)
        if dataset is None or schedule is None:
            owner_id = schedule.owner_id if schedule is not None else None
            _ended(uow, run, RunOutcome.failed, "the imported dataset was deleted", owner_id)
        elif dataset.status == DatasetStatus.failed:
            failed = dataset.error or "the import failed"
            _ended(uow, run, RunOutcome.failed, failed, dataset.owner_id)
        else:
            previous = uow.schedules.previous_version(run.schedule_id, run.version)
            owner = Principal(owner_id=dataset.owner_id, scope=KeyScope.write)
            if previous is not None and previous.sha256 == dataset.sha256:
                message = f"same content as the previous version, dataset {previous.id}"
                _ended(uow, run, RunOutcome.unchanged, message, owner.owner_id)
                uow.schedules.update_run(run.id, dataset_id=previous.id, version=None)
                duplicate = (dataset.id, owner)
            else:
                _, publish = _submit(uow, schedule, run, dataset.id, owner)
        uow.commit()
    _publish(uow, queue, publish)
    if duplicate is not None and storage is not None:  # an identical copy only takes quota
        try:
            delete_dataset(uow, storage, *duplicate)
        except Exception:
            log.warning("could not delete unchanged version %s", duplicate[0], exc_info=True)


def _hand_over_export(
    uow: UnitOfWork, queue: TaskQueue, run: ScheduleRun, destinations: Collection[str]
) -> None:
    """Once the run's job completed, submit its export (the job's artifact, or without one the
    job's dataset) with the owner's rights; a failed or cancelled job skips it.

    The run is claimed first (waiting -> submitting, a compare-and-set), so two beats never
    submit it twice; a crash right after the claim leaves it `submitting`, never doubled.
    """
    assert run.id is not None and run.export is not None
    if run.job_status in (JobStatus.queued.value, JobStatus.running.value):
        return
    with uow:
        claimed = uow.schedules.update_run_if(
            run.id, {"export_state": EXPORT_WAITING}, export_state="submitting"
        )
        uow.commit()
    if not claimed:
        return
    target = run.export
    state, result = f"skipped: job {run.job_status or 'deleted'}", {}
    if run.job_status == JobStatus.completed.value:
        with uow:
            job = uow.jobs.get_for_worker(run.job_id) if run.job_id else None
        if job is not None:
            artifact = target.get("artifact")
            try:
                export = submit_export(
                    uow,
                    queue,
                    Principal(owner_id=job.owner_id, scope=KeyScope.write),
                    ExportSource(job_id=job.id, artifact=artifact)
                    if artifact
                    else ExportSource(dataset_id=job.dataset_id),
                    str(target.get("destination")),
                    str(target.get("table")),
                    ExportMode(target.get("mode", "append")),
                    destinations=destinations,
                )
                state, result = "submitted", {"export_id": str(export.id)}
            except UseCaseError as exc:  # no such artifact, dataset gone, destination removed
                state, result = "failed", {"message": exc.message}
    with uow:
        uow.schedules.update_run(run.id, export={**target, **result}, export_state=state)
        uow.commit()
