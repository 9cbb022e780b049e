"""Schedule routes: create, list, detail, change (pause/resume), delete, run now, run history."""

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response

from api.auth import PrincipalDep, WriterDep
from api.deps import FetcherDep, QueueDep, SettingsDep, UowDep
from api.openapi import READ, WRITE, errors
from api.pagination import fetch_size, page_of
from api.routes.datasets import import_format, url_filename
from schemas.api import (
    ScheduleActionIn,
    ScheduleCreate,
    ScheduleOut,
    SchedulePage,
    SchedulePatch,
    ScheduleRunOut,
    ScheduleRunPage,
)
from schemas.domain.schedules import Schedule, ScheduleAction, ScheduleRun
from use_cases.schedules import (
    create_schedule,
    delete_schedule,
    get_schedule,
    run_schedule_now,
    update_schedule,
)

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])


def schedule_out(schedule: Schedule) -> ScheduleOut:
    base = f"/api/v1/schedules/{schedule.id}"
    return ScheduleOut(
        **schedule.model_dump(exclude={"owner_id", "action"}),
        action=schedule.action.model_dump(mode="json", exclude_none=True),
        links={"self": base, "runs": f"{base}/runs", "run": f"{base}/run"},
    )


def run_out(run: ScheduleRun) -> ScheduleRunOut:
    assert run.id is not None
    return ScheduleRunOut(**run.model_dump(exclude={"id", "schedule_id", "updated_at"}), id=run.id)


def to_action(body: ScheduleActionIn) -> ScheduleAction:
    """The action as stored; an imported file's format is settled now (415 when unknown)."""
    fmt = None
    if body.source_url is not None:
        fmt = import_format(body.format, url_filename(body.source_url)).value
    return ScheduleAction(
        dataset_id=body.dataset_id,
        source_url=body.source_url,
        format=fmt,
        steps=[s.model_dump() for s in body.steps],
        export=body.export.model_dump() if body.export is not None else None,
    )


@router.post("", status_code=201, responses=errors(400, 404, 415, *WRITE))
def create(
    body: ScheduleCreate,
    response: Response,
    uow: UowDep,
    fetcher: FetcherDep,
    settings: SettingsDep,
    principal: WriterDep,
) -> ScheduleOut:
    """Run a job template at cron times (in `timezone`) or every `interval_seconds`.

    Steps are checked as for POST /jobs; a bad cron, interval or timezone is a 422 naming it.
    """
    schedule = create_schedule(
        uow,
        principal,
        name=body.name,
        cron=body.cron,
        interval_seconds=body.interval_seconds,
        timezone=body.timezone,
        enabled=body.enabled,
        action=to_action(body.action),
        now=datetime.now(UTC),
        fetcher=fetcher,
        destinations=settings.destinations.keys(),
    )
    response.headers["Location"] = f"/api/v1/schedules/{schedule.id}"
    return schedule_out(schedule)


@router.get("", responses=errors(*READ))
def list_schedules(
    uow: UowDep,
    principal: PrincipalDep,
    cursor: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SchedulePage:
    """Schedules, newest first; pass `next_cursor` back as `cursor` for the next page."""
    with uow:
        fetched = uow.schedules.list(principal, before=cursor, limit=fetch_size(limit))
    page = page_of(fetched, limit, lambda s: str(s.id))
    return SchedulePage(items=[schedule_out(s) for s in page.items], next_cursor=page.next_cursor)


@router.get("/{schedule_id}", responses=errors(404, *READ))
def get(schedule_id: UUID, uow: UowDep, principal: PrincipalDep) -> ScheduleOut:
    """One schedule with its `next_run_at`."""
    return schedule_out(get_schedule(uow, principal, schedule_id))


@router.patch("/{schedule_id}", responses=errors(400, 404, 415, *WRITE))
def change(
    schedule_id: UUID,
    body: SchedulePatch,
    uow: UowDep,
    fetcher: FetcherDep,
    settings: SettingsDep,
    principal: WriterDep,
) -> ScheduleOut:
    """Change fields; `{"enabled": false}` pauses, `{"enabled": true}` resumes from now."""
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    for field in ("name", "timezone", "enabled", "action"):
        if field in changes and changes[field] is None:
            del changes[field]  # null means "unchanged" for these
    if body.action is not None:
        changes["action"] = to_action(body.action)
    schedule = update_schedule(
        uow,
        principal,
        schedule_id,
        changes,
        now=datetime.now(UTC),
        fetcher=fetcher,
        destinations=settings.destinations.keys(),
    )
    return schedule_out(schedule)


@router.delete("/{schedule_id}", status_code=204, responses=errors(404, *WRITE))
def remove(schedule_id: UUID, uow: UowDep, principal: WriterDep) -> Response:
    """Delete a schedule and its run history; the jobs and datasets it made stay."""
    delete_schedule(uow, principal, schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/run", status_code=202, responses=errors(404, *WRITE))
def run_now(
    schedule_id: UUID, uow: UowDep, queue: QueueDep, settings: SettingsDep, principal: WriterDep
) -> ScheduleRunOut:
    """Run the schedule once now (also when paused); its next_run_at does not move."""
    run = run_schedule_now(
        uow,
        queue,
        principal,
        schedule_id,
        now=datetime.now(UTC),
        quota_bytes=settings.owner_quota_bytes,
    )
    return run_out(run)


@router.get("/{schedule_id}/runs", responses=errors(404, *READ))
def list_runs(
    schedule_id: UUID,
    uow: UowDep,
    principal: PrincipalDep,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ScheduleRunPage:
    """The schedule's runs, newest first: due time, job, outcome (and the job's status)."""
    get_schedule(uow, principal, schedule_id)
    with uow:
        fetched = uow.schedules.list_runs(
            principal, schedule_id, before=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda r: r.id)
    return ScheduleRunPage(
        schedule_id=schedule_id,
        items=[run_out(r) for r in page.items],
        next_cursor=page.next_cursor,
    )
