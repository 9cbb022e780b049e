"""Job use cases: submit, cancel, delete, release waiting jobs, and recover lost ones."""

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from ports.queue import QueueUnavailable, TaskQueue
from ports.repositories import IdempotencyConflict, UnitOfWork
from ports.storage import ObjectStorage
from schemas.domain.ids import new_id
from schemas.domain.lifecycle import FINISHED_JOB_STATUSES
from schemas.domain.records import ColumnInfo, DatasetStatus, Job, JobStatus, JobStep, Principal
from use_cases.errors import Conflict, InvalidParams, NotFound
from use_cases.lifecycle import create_job, event, move_job, request_cancel

log = logging.getLogger(__name__)

FINISHED = FINISHED_JOB_STATUSES


def check_steps(steps: list[JobStep], columns: list[ColumnInfo] | None) -> list[JobStep]:
    """Validate every step's processor and params (and columns, when the schema is known)."""
    # Imported here: the processors load DuckDB and numpy, which a worker's main process
    # (it only consumes messages and runs the reaper) does not need.
    from services.processing.processors.base import ParamsError
    from services.processing.processors.registry import UnknownProcessor, validate_step

    if not steps:
        raise InvalidParams("a job needs at least one step", {"field": "steps"})
    checked = []
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        try:
            params = validate_step(step.processor, step.params, columns)
        except UnknownProcessor as exc:
            raise InvalidParams(
                str(exc),
                {"step": index, "field": f"{where}.processor", "processor": step.processor},
            ) from None
        except ParamsError as exc:
            raise InvalidParams(
                f"{where} ({step.processor}): {exc}",
                {
                    "step": index,
                    "processor": step.processor,
                    "field": f"{where}.params.{exc.field}",
                },
            ) from None
        checked.append(JobStep(processor=step.processor, params=params.model_dump(mode="json")))
    return checked


def request_fingerprint(dataset_id: UUID, steps: list[JobStep], name: str | None) -> str:
    body = {"dataset_id": str(dataset_id), "steps": [s.model_dump() for s in steps], "name": name}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def submit_job(
    uow: UnitOfWork,
    queue: TaskQueue,
    *,
    principal: Principal,
    dataset_id: UUID,
    steps: list[JobStep],
    name: str | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
) -> tuple[Job, bool]:
    """Record a queued job of the principal on one of its datasets, with its `created` event
    (holding `request_id`, the submitting request's id, for the worker's logs), then publish
    it; returns (job, created). Another owner's dataset is NotFound."""
    fingerprint = request_fingerprint(dataset_id, steps, name)
    with uow:
        if idempotency_key:
            existing = uow.jobs.get_by_idempotency_key(principal, idempotency_key)
            if existing is not None:
                return _replay(existing, fingerprint, idempotency_key), False
        dataset = uow.datasets.get(dataset_id, principal)
        if dataset is None:
            raise NotFound(f"dataset {dataset_id} not found", {"dataset_id": str(dataset_id)})
        if dataset.status == DatasetStatus.failed:
            raise Conflict(
                f"dataset {dataset_id} failed validation: {dataset.error}",
                {"dataset_id": str(dataset_id), "status": dataset.status.value},
            )
        ready = dataset.status == DatasetStatus.ready
        checked = check_steps(steps, dataset.columns if ready else None)
        now = datetime.now(UTC)
        job = Job(
            id=new_id(),
            owner_id=principal.owner_id,
            dataset_id=dataset_id,
            name=name,
            status=JobStatus.queued,
            steps=checked,
            message="queued" if ready else "waiting for the dataset to be validated",
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            created_at=now,
            updated_at=now,
        )
        try:
            create_job(uow, job, request_id=request_id)
        except IdempotencyConflict:  # a concurrent request with the same key won the race
            uow.rollback()
            existing = uow.jobs.get_by_idempotency_key(principal, idempotency_key or "")
            if existing is None:
                raise
            return _replay(existing, fingerprint, idempotency_key or ""), False
        uow.commit()
    if ready:
        publish_job(uow, queue, job.id)
    else:  # validation may have finished since we looked: then nobody else will release this job
        release_waiting_jobs(uow, queue, dataset_id)
    return job, True


def _replay(existing: Job, fingerprint: str, key: str) -> Job:
    if existing.request_hash != fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body",
            {"idempotency_key": key, "job_id": str(existing.id)},
        )
    return existing


def publish_job(uow: UnitOfWork, queue: TaskQueue, job_id: UUID) -> bool:
    """Publish after commit; when the broker is down the reaper re-publishes later."""
    try:
        queue.enqueue_job(job_id)
    except QueueUnavailable as exc:
        log.warning("job %s not published yet: %s", job_id, exc)
        return False
    try:
        with uow:
            uow.job_events.add(event(job_id, "enqueued"))
            # A history line, not state: no need to wait for the disk in the request path.
            uow.commit(durable=False)
    except Exception:  # the job is published; a missing history line is not worth a 5xx
        log.warning("could not record that job %s was enqueued", job_id, exc_info=True)
    return True


def release_waiting_jobs(uow: UnitOfWork, queue: TaskQueue, dataset_id: UUID) -> None:
    """After validation: publish jobs that waited for the dataset, or fail them if it failed."""
    publishable = []
    with uow:
        dataset = uow.datasets.get_for_worker(dataset_id)
        waiting = uow.jobs.list_queued_for_dataset(dataset_id)
        if dataset is None or not waiting:
            return
        if dataset.status not in (DatasetStatus.ready, DatasetStatus.failed):
            return  # still validating (e.g. a retry is pending): nothing to decide yet
        for job in waiting:
            if dataset.status == DatasetStatus.failed:
                message = f"dataset {dataset_id} failed validation: {dataset.error}"
                _fail_queued(
                    uow, job.id, {"step": None, "type": "DatasetFailed", "message": message}
                )
                continue
            # Columns are known now: a step naming a missing column fails here, not in a worker.
            try:
                check_steps(job.steps, dataset.columns)
            except InvalidParams as exc:
                step = exc.details.get("step")
                _fail_queued(
                    uow, job.id, {"step": step, "type": "InvalidParams", "message": exc.message}
                )
                continue
            uow.jobs.touch(job.id, message="queued")  # not a status change: it stays queued
            publishable.append(job.id)
        uow.commit()
    for job_id in publishable:
        publish_job(uow, queue, job_id)


def _fail_queued(uow: UnitOfWork, job_id: UUID, error: dict[str, Any]) -> None:
    move_job(uow, job_id, JobStatus.queued, JobStatus.failed, error=error, payload={"error": error})


def cancel_job(uow: UnitOfWork, queue: TaskQueue, job_id: UUID, principal: Principal) -> Job:
    """Cancel one of the principal's jobs: a queued one at once, a running one is asked to stop
    (it ends `cancelled` in seconds). Another owner's job is NotFound."""
    with uow:
        job = uow.jobs.get(job_id, principal)
        if job is None:
            raise NotFound(f"job {job_id} not found", {"job_id": str(job_id)})
        if job.status in FINISHED:
            raise Conflict(
                f"job {job_id} is already {job.status.value}", {"status": job.status.value}
            )
        if not request_cancel(uow, job_id):  # it finished a moment ago
            raise Conflict(f"job {job_id} has already finished", {"job_id": str(job_id)})
        _cancel_queued(uow, job_id, reason="cancelled before it started")
        uow.commit()
        job = uow.jobs.get(job_id, principal)
    try:
        queue.revoke_job(job_id)
    except QueueUnavailable as exc:  # the claim refuses it anyway: cancel_requested is set
        log.warning("could not revoke %s: %s", job_id, exc)
    assert job is not None
    return job


def _cancel_queued(uow: UnitOfWork, job_id: UUID, *, reason: str) -> None:
    move_job(
        uow,
        job_id,
        JobStatus.queued,
        JobStatus.cancelled,
        message=reason,
        payload={"reason": reason},
    )


def delete_job(uow: UnitOfWork, results: ObjectStorage, job_id: UUID, principal: Principal) -> None:
    """Delete one of the principal's finished jobs with its events and artifacts; refused while
    it is active. Another owner's job is NotFound."""
    with uow:
        job = uow.jobs.get(job_id, principal)
        if job is None:
            raise NotFound(f"job {job_id} not found", {"job_id": str(job_id)})
        if job.status not in FINISHED:
            raise Conflict(
                f"job {job_id} is {job.status.value}; cancel it first", {"status": job.status.value}
            )
        uow.jobs.delete(job_id)
        uow.commit()
    results.delete_prefix(f"jobs/{job_id}/")


def recover_jobs(
    uow: UnitOfWork,
    queue: TaskQueue,
    results: ObjectStorage,
    *,
    heartbeat_timeout_s: float,
    grace_s: float,
    max_attempts: int,
) -> int:
    """Requeue (or fail) running jobs whose worker went silent; re-publish unclaimed queued jobs."""
    now = datetime.now(UTC)
    to_publish: list[UUID] = []
    ended: list[UUID] = []
    with uow:
        for job in uow.jobs.list_stale_running(now - timedelta(seconds=heartbeat_timeout_s)):
            if _recover_running(uow, job, now, max_attempts):
                to_publish.append(job.id)
            else:
                ended.append(job.id)
        for job in uow.jobs.list_unclaimed_queued(now - timedelta(seconds=grace_s)):
            if job.cancel_requested:  # cancelled while it went back to the queue: finish it
                _cancel_queued(uow, job.id, reason="cancel requested")
                continue
            uow.jobs.touch(job.id)  # the next re-publish waits another grace period
            to_publish.append(job.id)
        uow.commit()
    for job_id in ended:  # what its dead attempts stored (or began to) is nobody's result
        try:
            results.delete_prefix(f"jobs/{job_id}/")
        except Exception:
            log.warning("could not delete the files of ended job %s", job_id, exc_info=True)
    for job_id in to_publish:
        publish_job(uow, queue, job_id)
    return len(to_publish) + len(ended)


def _recover_running(uow: UnitOfWork, job: Job, now: datetime, max_attempts: int) -> bool:
    """Requeue a silent job's attempt (True) or end it: cancelled, or failed after its last."""
    silent = f"worker {job.worker_id} stopped sending heartbeats"
    running, attempt = JobStatus.running, job.attempts
    if job.cancel_requested:
        move_job(
            uow, job.id, running, JobStatus.cancelled, attempt=attempt, payload={"reason": silent}
        )
        return False
    if attempt >= max_attempts:
        error = {
            "step": job.current_step,
            "type": "WorkerLost",
            "message": f"{silent}; gave up after {attempt} attempt(s)",
        }
        move_job(
            uow,
            job.id,
            running,
            JobStatus.failed,
            attempt=attempt,
            error=error,
            payload={"error": error},
        )
        return False
    return move_job(
        uow,
        job.id,
        running,
        JobStatus.queued,
        attempt=attempt,
        event_type="requeued",
        payload={"attempt": attempt, "reason": silent},
        worker_id=None,
        message=f"requeued: {silent}",
    )
