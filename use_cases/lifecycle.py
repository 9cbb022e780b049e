"""Every write of a job's or a dataset's status, with the event that records it.

The legal moves are the tables of schemas/domain/lifecycle.py. These functions are the only
callers of the repositories' status writes (jobs.add, claim, transition, request_cancel;
datasets.transition); each writes in the caller's open transaction, and the caller commits
(durable or not). Writes that keep the status are elsewhere: the heartbeat
(use_cases/job_monitor.py) and `touch` of a queued job (use_cases/jobs.py).

    create_job       (new) -> queued              created
    claim_job        queued -> running            started
    move_job         queued|running -> failed     failed
                     queued|running -> cancelled  cancelled
                     running -> queued            retried | requeued
    complete_job     running -> completed         completed (with artifacts and step events)

Every move to a finished status also writes the deliveries of the owner's webhooks that want
it (use_cases/webhooks.py): the outbox is committed with the outcome or not at all.
    request_cancel   sets cancel_requested        cancel_requested
    move_dataset     uploaded -> validating -> ready | failed, validating -> uploaded
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ports.repositories import UnitOfWork
from schemas.domain.lifecycle import (
    FINISHED_JOB_STATUSES,
    JOB_INITIAL_STATUS,
    IllegalTransition,
    check_dataset_transition,
    job_transition_event,
)
from schemas.domain.records import Artifact, DatasetStatus, Job, JobEvent, JobStatus
from use_cases.webhooks import announce_job

_STARTED = job_transition_event(JobStatus.queued, JobStatus.running)
_COMPLETED = job_transition_event(JobStatus.running, JobStatus.completed)
# Moves with a writer of their own: the claim counts the attempt, completion records results.
_OWN_WRITER = {
    (JobStatus.queued, JobStatus.running): "claim_job",
    (JobStatus.running, JobStatus.completed): "complete_job",
}


def event(job_id: UUID, type_: str, **payload: Any) -> JobEvent:
    """A job event stamped now."""
    return JobEvent(job_id=job_id, type=type_, payload=payload, created_at=datetime.now(UTC))


def create_job(uow: UnitOfWork, job: Job, *, request_id: str | None = None) -> None:
    """Insert a queued job with its `created` event (IdempotencyConflict from the insert);
    `request_id`, the id of the request that submitted it, goes into the event."""
    if job.status != JOB_INITIAL_STATUS:
        raise IllegalTransition(f"a job starts {JOB_INITIAL_STATUS.value}, not {job.status.value}")
    uow.jobs.add(job)
    traced = {"request_id": request_id} if request_id else {}
    uow.job_events.add(
        event(job.id, "created", steps=len(job.steps), dataset_id=str(job.dataset_id), **traced)
    )


def claim_job(uow: UnitOfWork, job_id: UUID, worker_id: str) -> Job | None:
    """Queued -> running for one more attempt, with `started`; None when not claimable."""
    # One UPDATE ... RETURNING: a duplicate delivery or a cancelled job matches no row.
    claimed = uow.jobs.claim(job_id, worker_id, datetime.now(UTC))
    if claimed is None:
        return None
    uow.job_events.add(event(job_id, _STARTED, attempt=claimed.attempts, worker_id=worker_id))
    return claimed


def move_job(
    uow: UnitOfWork,
    job_id: UUID,
    from_status: JobStatus,
    to_status: JobStatus,
    *,
    attempt: int | None = None,
    event_type: str | None = None,
    payload: dict[str, Any] | None = None,
    **changes: Any,
) -> bool:
    """Compare-and-set a job's status (and attempt); when it took, append the event saying so."""
    type_ = job_transition_event(from_status, to_status, event_type)
    if (from_status, to_status) in _OWN_WRITER:
        writer = _OWN_WRITER[from_status, to_status]
        raise IllegalTransition(f"job {from_status.value}->{to_status.value} goes through {writer}")
    if to_status in FINISHED_JOB_STATUSES:
        changes.setdefault("finished_at", datetime.now(UTC))
        changes.setdefault("message", to_status.value)
    if not uow.jobs.transition(job_id, [from_status], to_status, attempt=attempt, **changes):
        return False
    uow.job_events.add(event(job_id, type_, **(payload or {})))
    if to_status in FINISHED_JOB_STATUSES:
        finished = uow.jobs.get_for_worker(job_id)
        if finished is not None:
            announce_job(uow, finished)
    return True


def complete_job(
    uow: UnitOfWork,
    job: Job,
    result: dict[str, Any],
    artifacts: Sequence[Artifact],
    earlier_events: Sequence[JobEvent] = (),
) -> bool:
    """Running -> completed for this attempt, with its artifacts and `completed`; False if lost.

    `earlier_events` (the attempt's step events not written yet) precede `completed` in one
    multi-row insert.
    """
    done = uow.jobs.transition(
        job.id,
        [JobStatus.running],
        JobStatus.completed,
        attempt=job.attempts,
        result=result,
        progress=1.0,
        message="completed",
        finished_at=datetime.now(UTC),
    )
    if not done:  # cancelled or reaped meanwhile
        return False
    for artifact in artifacts:
        uow.artifacts.add(artifact)
    completed = event(job.id, _COMPLETED, artifacts=[a.name for a in artifacts])
    uow.job_events.add_many([*earlier_events, completed])
    finished = {"status": JobStatus.completed, "finished_at": datetime.now(UTC)}
    announce_job(uow, job.model_copy(update=finished))
    return True


def request_cancel(uow: UnitOfWork, job_id: UUID) -> bool:
    """Flag a queued or running job to stop, with `cancel_requested`; False once it finished."""
    if not uow.jobs.request_cancel(job_id):
        return False
    uow.job_events.add(event(job_id, "cancel_requested"))
    return True


def move_dataset(
    uow: UnitOfWork,
    dataset_id: UUID,
    from_status: DatasetStatus,
    to_status: DatasetStatus,
    **changes: Any,
) -> bool:
    """Compare-and-set a dataset's status (and other fields); False when it was not `from`."""
    check_dataset_transition([from_status], to_status)
    return uow.datasets.transition(dataset_id, [from_status], to_status, **changes)
