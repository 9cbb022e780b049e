"""Celery tasks: thin calls into use cases, with their log context and metrics."""

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from celery import Task, shared_task

from use_cases.datasets import validate_dataset
from use_cases.imports import import_dataset
from use_cases.jobs import release_waiting_jobs
from use_cases.run_export import run_export
from use_cases.schedules import run_due_schedules
from workers.celery_app import context_of
from workers.celery_queue import (
    IMPORT_DATASET_TASK,
    RUN_EXPORT_TASK,
    RUN_JOB_TASK,
    VALIDATE_DATASET_TASK,
)
from workers.errors import is_transient
from workers.limits import compute_limits, engine_settings, ingest_limits
from workers.metrics import observe_attempt, traced_job, traced_validation
from workers.reaper import reap_once

log = logging.getLogger(__name__)

VALIDATION_RETRIES = 3


@shared_task(
    name=VALIDATE_DATASET_TASK,
    bind=True,
    autoretry_for=(Exception,),
    max_retries=VALIDATION_RETRIES,
    retry_backoff=2,
    retry_backoff_max=60,
)
def validate_dataset_task(self: Task, dataset_id: str) -> None:
    context = context_of(self)
    workdir = Path(context.settings.tmp_dir)
    final = self.request.retries >= VALIDATION_RETRIES
    uow = context.new_uow()
    with traced_validation(context.new_uow, UUID(dataset_id), "validate") as done:
        status = "retry"
        try:
            result = validate_dataset(
                uow,
                context.datasets_storage,
                UUID(dataset_id),
                workdir,
                final_attempt=final,
                keep_alive=context.new_uow,  # the reaper tells a long validation from a dead one
                limits=ingest_limits(context.settings),
            )
            status = result.value if result is not None else "skipped"
        finally:  # also after a crash on the final attempt: waiting jobs must learn the outcome
            done(status)
            release_waiting_jobs(uow, context.queue, UUID(dataset_id))


@shared_task(
    name=IMPORT_DATASET_TASK,
    bind=True,
    autoretry_for=(Exception,),
    max_retries=VALIDATION_RETRIES,
    retry_backoff=2,
    retry_backoff_max=60,
)
def import_dataset_task(self: Task, dataset_id: str) -> None:
    context = context_of(self)
    uow = context.new_uow()
    with traced_validation(context.new_uow, UUID(dataset_id), "import") as done:
        status = "retry"
        try:
            result = import_dataset(
                uow,
                context.datasets_storage,
                context.fetcher,
                UUID(dataset_id),
                Path(context.settings.tmp_dir),
                max_bytes=context.settings.max_upload_bytes,
                quota_bytes=context.settings.owner_quota_bytes,
                final_attempt=self.request.retries >= VALIDATION_RETRIES,
                keep_alive=context.new_uow,
                limits=ingest_limits(context.settings),
            )
            status = result.value if result is not None else "skipped"
        finally:  # jobs submitted on the dataset meanwhile wait for the outcome, as for an upload
            done(status)
            release_waiting_jobs(uow, context.queue, UUID(dataset_id))


@shared_task(name="assay.reap", bind=True)
def reap_task(self: Task) -> int:
    return reap_once(context_of(self))


@shared_task(name="assay.tick_schedules", bind=True)
def tick_schedules_task(self: Task) -> int:
    """One schedule tick; `assay beat` no longer sends it (it ticks in its own thread), kept so
    ticks an older beat queued still run."""
    context = context_of(self)
    return run_due_schedules(
        context.new_uow(),
        context.queue,
        datetime.now(UTC),
        quota_bytes=context.settings.owner_quota_bytes,
        storage=context.datasets_storage,
        destinations=context.settings.destinations.keys(),
    )


def claim_retry_delay(retries: int) -> float:
    """Seconds before a job's message is delivered again after the database did not answer:
    short, so a blip costs about a second, and capped, so an outage is noticed soon after."""
    return min(2.0, 0.25 * float(2 ** min(retries, 4)))


@shared_task(name=RUN_JOB_TASK, bind=True, max_retries=None)
def run_job_task(self: Task, job_id: str) -> str:
    from use_cases.run_job import Outcome, run_job  # preloaded by each pool process

    context = context_of(self)
    with traced_job(context.new_uow, UUID(job_id)) as trace:
        started = time.monotonic()
        try:
            outcome = run_job(
                context.new_uow,
                context.datasets_storage,
                context.results_storage,
                UUID(job_id),
                worker_id=self.request.hostname or "worker",
                workdir=Path(context.settings.tmp_dir),
                engine=engine_settings(context.settings),
                compute=compute_limits(context.settings),
                is_transient=is_transient,
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The database (most often) was unreachable before the claim, or at the end: the
            # message would be acknowledged and gone, leaving the job to the reaper's grace
            # period. Deliver it again soon instead; a claim that already took skips it.
            raise self.retry(countdown=claim_retry_delay(self.request.retries), exc=exc) from exc
        seconds = time.monotonic() - started
        if outcome != Outcome.skipped:  # one line per attempt, in the job's log context
            log.info(
                "job attempt ended %s in %.3f s",
                outcome.value,
                seconds,
                extra={"outcome": outcome.value, "seconds": round(seconds, 3)},
            )
        observe_attempt(context.new_uow, trace, outcome.value, seconds)
    if outcome == Outcome.retry:  # back to queued after a transient error: publish again, later
        raise self.retry(countdown=min(60, 2 ** (self.request.retries + 1)))
    return outcome.value


@shared_task(name=RUN_EXPORT_TASK, bind=True, max_retries=None)
def run_export_task(self: Task, export_id: str) -> str:
    context = context_of(self)
    settings = context.settings
    assert context.exports_loader is not None, "bootstrap() gives workers an exports loader"
    try:
        outcome = run_export(
            context.new_uow,
            context.datasets_storage,
            context.results_storage,
            context.exports_loader,
            UUID(export_id),
            worker_id=self.request.hostname or "worker",
            workdir=Path(settings.tmp_dir),
            heartbeat_interval_s=settings.heartbeat_interval_s,
            max_attempts=settings.job_max_attempts,
            is_transient=is_transient,
        )
    except Exception as exc:
        if not is_transient(exc):  # the app database was unreachable around the claim
            raise
        raise self.retry(countdown=claim_retry_delay(self.request.retries), exc=exc) from exc
    if outcome == "retry":  # back to queued after a transient error: publish again, later
        raise self.retry(countdown=min(60, 2 ** (self.request.retries + 1)))
    return outcome
