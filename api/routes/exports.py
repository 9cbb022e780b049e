"""Export routes: load a dataset or a job's artifact into a PostgreSQL table, follow, cancel."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response

from api.auth import PrincipalDep, WriterDep
from api.deps import QueueDep, SettingsDep, UowDep
from api.openapi import READ, WRITE, errors
from api.pagination import fetch_size, page_of
from schemas.api_exports import (
    ExportCreate,
    ExportEventOut,
    ExportEventPage,
    ExportFailedRowOut,
    ExportFailedRowPage,
    ExportLinks,
    ExportOut,
    ExportPage,
)
from schemas.domain.exports import Export, ExportStatus
from use_cases.errors import NotFound
from use_cases.exports import ExportSource, cancel_export, submit_export

router = APIRouter(prefix="/api/v1/exports", tags=["exports"])
MAX_ID = 2**63 - 1


def export_out(export: Export) -> ExportOut:
    base = f"/api/v1/exports/{export.id}"
    fields = set(ExportOut.model_fields) - {"links", "table"}
    return ExportOut(
        **export.model_dump(include=fields),
        table=export.table_name,
        links=ExportLinks(
            self=base,
            events=f"{base}/events",
            failed_rows=f"{base}/failed-rows",
            cancel=f"{base}/cancel",
        ),
    )


def load_export(export_id: UUID, uow: UowDep, principal: PrincipalDep) -> Export:
    """One of the caller's exports; 404 for another owner's, exactly as for a missing one."""
    with uow:
        export = uow.exports.get(export_id, principal)
    if export is None:
        raise NotFound(f"export {export_id} not found", {"export_id": str(export_id)})
    return export


ExportDep = Annotated[Export, Depends(load_export)]


@router.post("", status_code=202, responses=errors(400, 404, 409, *WRITE))
def create_export(
    body: ExportCreate,
    response: Response,
    uow: UowDep,
    queue: QueueDep,
    settings: SettingsDep,
    principal: WriterDep,
) -> ExportOut:
    """Queue an export into `table` of a configured destination; 202 with its status URL."""
    source = body.source
    export = submit_export(
        uow,
        queue,
        principal,
        ExportSource(dataset_id=source.dataset_id, job_id=source.job_id, artifact=source.artifact),
        body.destination,
        body.table,
        body.mode,
        destinations=settings.destinations.keys(),
    )
    response.headers["Location"] = f"/api/v1/exports/{export.id}"
    return export_out(export)


@router.get("", responses=errors(*READ))
def list_exports(
    uow: UowDep,
    principal: PrincipalDep,
    status: ExportStatus | None = None,
    cursor: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ExportPage:
    """Exports, newest first; pass `next_cursor` back as `cursor` for the next page."""
    with uow:
        fetched = uow.exports.list(principal, status=status, before=cursor, limit=fetch_size(limit))
    page = page_of(fetched, limit, lambda e: str(e.id))
    return ExportPage(items=[export_out(e) for e in page.items], next_cursor=page.next_cursor)


@router.get("/{export_id}", responses=errors(404, *READ))
def get_export(export: ExportDep) -> ExportOut:
    """Status, progress, attempts, error and (once completed) the load's summary."""
    return export_out(export)


@router.get("/{export_id}/events", responses=errors(404, *READ))
def list_export_events(
    export: ExportDep,
    uow: UowDep,
    principal: PrincipalDep,
    cursor: Annotated[int, Query(ge=0, le=MAX_ID, description="event id to continue after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> ExportEventPage:
    """The export's history: every transition and progress, oldest first."""
    with uow:
        fetched = uow.exports.list_events(
            principal, export.id, after_id=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda e: e.id)
    return ExportEventPage(
        export_id=export.id,
        items=[
            ExportEventOut(**e.model_dump(include={"id", "type", "payload", "created_at"}))
            for e in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get("/{export_id}/failed-rows", responses=errors(404, *READ))
def list_export_failed_rows(
    export: ExportDep,
    uow: UowDep,
    principal: PrincipalDep,
    cursor: Annotated[int, Query(ge=0, le=MAX_ID, description="row number to continue after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ExportFailedRowPage:
    """Rows the target rejected: row number in the source, values, the database's reason."""
    with uow:
        fetched = uow.exports.list_failed_rows(
            principal, export.id, after_row=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda r: r.row_number)
    return ExportFailedRowPage(
        export_id=export.id,
        items=[
            ExportFailedRowOut(**r.model_dump(include={"row_number", "values", "reason"}))
            for r in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.post("/{export_id}/cancel", status_code=202, responses=errors(404, 409, *WRITE))
def cancel(export_id: UUID, uow: UowDep, principal: WriterDep) -> ExportOut:
    """Cancel a queued export now, or stop a running one before it touches the table."""
    return export_out(cancel_export(uow, export_id, principal))
