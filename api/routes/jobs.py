"""Job routes: submit, list, detail, events, live stream, cancel, result, artifacts, delete."""

from collections.abc import AsyncIterator, Callable
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, WriterDep
from api.deps import ContextDep, QueueDep, ResultsStorageDep, UowDep, WakeupsDep
from api.downloads import attachment
from api.logging import current_request_id
from api.openapi import (
    EVENT_STREAM,
    READ,
    REDIRECT,
    WRITE,
    JobCreateIn,
    errors,
    file_response,
    json_errors,
)
from api.pagination import fetch_size, page_of
from ports.repositories import UnitOfWork
from schemas.api import (
    ArtifactOut,
    JobEventOut,
    JobEventPage,
    JobLinks,
    JobOut,
    JobPage,
    JobResultOut,
)
from schemas.domain.records import Job, JobEvent, JobStatus, JobStep, Principal
from use_cases.errors import Conflict, NotFound
from use_cases.jobs import FINISHED, cancel_job, delete_job, submit_job

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
# The types an artifact may have (processors write CSV, Parquet, JSON or NDJSON).
ARTIFACT_TYPES = [
    "text/csv",
    "application/vnd.apache.parquet",
    "application/json",
    "application/x-ndjson",
    "image/png",
    "application/octet-stream",
]
EVENTS_PER_READ = 500
TERMINAL_EVENTS = {status.value for status in FINISHED}
MAX_ID = 2**63 - 1


def job_out(job: Job) -> JobOut:
    base = f"/api/v1/jobs/{job.id}"
    return JobOut(
        **job.model_dump(include=set(JobOut.model_fields) - {"links"}),
        links=JobLinks(
            self=base,
            events=f"{base}/events",
            stream=f"{base}/stream",
            result=f"{base}/result",
            cancel=f"{base}/cancel",
        ),
    )


def load_job(job_id: UUID, uow: UowDep, principal: PrincipalDep) -> Job:
    """One of the caller's jobs; 404 for another owner's, exactly as for a missing one."""
    with uow:
        job = uow.jobs.get(job_id, principal)
    if job is None:
        raise NotFound(f"job {job_id} not found", {"job_id": str(job_id)})
    return job


JobDep = Annotated[Job, Depends(load_job)]


@router.post("", status_code=202, responses=errors(400, 404, 409, *WRITE))
def create_job(
    body: JobCreateIn,
    response: Response,
    uow: UowDep,
    queue: QueueDep,
    principal: WriterDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobOut:
    """Queue a job running `steps` in order on a dataset; an Idempotency-Key makes retries safe."""
    job, created = submit_job(
        uow,
        queue,
        principal=principal,
        dataset_id=body.dataset_id,
        steps=[JobStep(processor=s.processor, params=s.params) for s in body.steps],
        name=body.name,
        idempotency_key=idempotency_key,
        request_id=current_request_id(),
    )
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.get("", responses=errors(*READ))
def list_jobs(
    uow: UowDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    dataset_id: UUID | None = None,
    cursor: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    with uow:
        fetched = uow.jobs.list(
            principal, status=status, dataset_id=dataset_id, before=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda j: str(j.id))
    return JobPage(items=[job_out(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", responses=errors(404, *READ))
async def get_job(job: JobDep) -> JobOut:
    """Status, progress, current step, attempts and error of one job."""
    # async: the database read is load_job's (one thread hand-off); this only shapes it.
    return job_out(job)


@router.get("/{job_id}/events", responses=errors(404, *READ))
def list_job_events(
    job: JobDep,
    uow: UowDep,
    principal: PrincipalDep,
    cursor: Annotated[int, Query(ge=0, le=MAX_ID, description="event id to continue after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JobEventPage:
    """The job's history: every transition and step, oldest first."""
    with uow:
        fetched = uow.job_events.list_for_job(
            principal, job.id, after_id=cursor, limit=fetch_size(limit)
        )
    page = page_of(fetched, limit, lambda e: e.id)
    return JobEventPage(
        job_id=job.id,
        items=[
            JobEventOut(**e.model_dump(include={"id", "type", "payload", "created_at"}))
            for e in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/{job_id}/stream",
    response_class=EventSourceResponse,
    responses=EVENT_STREAM | json_errors(404, *READ),
)
async def stream_job(
    job: JobDep,
    request: Request,
    context: ContextDep,
    wakeups: WakeupsDep,
    principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: progress, steps and one terminal event; Last-Event-ID resumes.

    Events are always read from the database. Between reads the stream waits for a wake-up
    (PostgreSQL: a notification sent when an event of this job commits) or for the wake-ups'
    poll interval, whichever comes first; so a lost wake-up delays an event, never loses it.
    Keep-alive comments are sent by EventSourceResponse while the job is quiet.
    """
    after = _event_id(last_event_id)
    # Subscribed before the first read: an event committed after that read wakes the wait.
    async with wakeups.subscribe(job.id) as wakeup:
        while True:
            events, over = await run_in_threadpool(
                _events_since, context.new_uow, principal, job.id, after
            )
            for item in events:
                after = item.id or after
                yield ServerSentEvent(
                    id=str(item.id),
                    event=item.type,
                    data={
                        "job_id": str(job.id),
                        "type": item.type,
                        **item.payload,
                        "created_at": item.created_at.isoformat(),
                    },
                )
                if item.type in TERMINAL_EVENTS:
                    return
            if over:
                return  # the terminal event was before Last-Event-ID, or the job was deleted
            if len(events) == EVENTS_PER_READ:
                continue  # catching up on a long history: read on without waiting
            await wakeup.wait(wakeups.poll_interval_s)
            if await request.is_disconnected():
                return


def _event_id(header: str | None) -> int:
    """The Last-Event-ID to resume after; anything that is not an event id means the start."""
    if header and header.strip().isdigit():
        return min(int(header.strip()), MAX_ID)
    return 0


def _events_since(
    new_uow: Callable[[], UnitOfWork], principal: Principal, job_id: UUID, after: int
) -> tuple[list[JobEvent], bool]:
    """Events after `after`, and whether the stream is over (job finished or deleted).

    One query while there are events to send. Only when there are none is the status read,
    and if it is terminal the events are read once more: the terminal event commits with the
    terminal status, so a status seen finished means its event is visible to the next read.
    """
    with new_uow() as uow:
        events = uow.job_events.list_for_job(
            principal, job_id, after_id=after, limit=EVENTS_PER_READ
        )
        if events:
            return events, False
        job = uow.jobs.get(job_id, principal)
        if job is None:
            return [], True
        if job.status not in FINISHED:
            return [], False
        events = uow.job_events.list_for_job(
            principal, job_id, after_id=after, limit=EVENTS_PER_READ
        )
        return events, True


@router.post("/{job_id}/cancel", status_code=202, responses=errors(404, 409, *WRITE))
def cancel(job_id: UUID, uow: UowDep, queue: QueueDep, principal: WriterDep) -> JobOut:
    """Cancel a queued job now, or ask a running one to stop; 409 when it already finished."""
    return job_out(cancel_job(uow, queue, job_id, principal))


@router.get("/{job_id}/result", responses=errors(404, 409, *READ))
def get_result(job: JobDep, uow: UowDep, principal: PrincipalDep) -> JobResultOut:
    """Summary of every step and the artifacts; 409 until the job has completed."""
    if job.status != JobStatus.completed:
        raise Conflict(
            f"job {job.id} is {job.status.value}; results exist once it has completed",
            {"status": job.status.value},
        )
    with uow:
        artifacts = uow.artifacts.list_for_job(principal, job.id)
    return JobResultOut(
        job_id=job.id,
        status=job.status,
        steps=(job.result or {}).get("steps", []),
        artifacts=[
            ArtifactOut(
                **a.model_dump(include={"name", "content_type", "size_bytes", "sha256"}),
                url=f"/api/v1/jobs/{job.id}/artifacts/{a.name}",
            )
            for a in artifacts
        ],
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=StreamingResponse,
    responses=file_response("The artifact file", ARTIFACT_TYPES) | REDIRECT | errors(404, *READ),
)
def download_artifact(
    job: JobDep, name: str, uow: UowDep, results: ResultsStorageDep, principal: PrincipalDep
) -> Response:
    """The artifact file, or a redirect to a presigned URL when storage is S3."""
    with uow:
        artifact = uow.artifacts.get(principal, job.id, name)
    if artifact is None:
        raise NotFound(f"job {job.id} has no artifact {name!r}", {"name": name})
    url = results.presigned_url(artifact.storage_key, filename=artifact.name)
    if url:
        return RedirectResponse(url, status_code=307)
    return StreamingResponse(
        results.iter_chunks(artifact.storage_key),
        media_type=artifact.content_type,
        headers={
            "Content-Length": str(artifact.size_bytes),
            "Content-Disposition": attachment(artifact.name),
            "ETag": f'"{artifact.sha256}"',
        },
    )


@router.delete("/{job_id}", status_code=204, responses=errors(404, 409, *WRITE))
def remove_job(
    job_id: UUID, uow: UowDep, results: ResultsStorageDep, principal: WriterDep
) -> Response:
    """Delete a finished job, its history and its artifacts (409 while it is active)."""
    delete_job(uow, results, job_id, principal)
    return Response(status_code=204)
