"""The job engine's worker side: claim, run steps with heartbeat and cancel checks, finish once.

Every status write goes through use_cases/lifecycle.py; the heartbeat is use_cases/job_monitor.py.
"""

import enum
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage, StorageUnavailable
from schemas.domain.records import Artifact, Dataset, DatasetStatus, Job, JobStatus
from services.processing.processors.base import (
    ComputeLimits,
    JobCancelled,
    ParamsError,
    ProcessorInputError,
    StepInput,
)
from services.processing.processors.numeric import ProfileCache
from services.processing.processors.registry import get_processor, validate_step
from use_cases.job_monitor import JobLost, Monitor
from use_cases.lifecycle import claim_job, complete_job, event, move_job

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    skipped = "skipped"  # not claimable: a duplicate delivery, cancelled, or dataset not ready
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    retry = "retry"  # put back to queued after a transient error; publish again later
    lost = "lost"  # another party (the reaper, a cancel) took the job over mid-run


@dataclass(frozen=True)
class EngineSettings:
    """The job engine's own knobs (step tuning is ComputeLimits, passed through unread)."""

    heartbeat_interval_s: float = 0.5
    max_attempts: int = 3


@dataclass(frozen=True)
class Attempt:
    """What every step of one claimed attempt shares."""

    job: Job  # as claimed: its attempts count is this attempt's number
    dataset: Dataset
    source: Path  # the local copy of the dataset's typed Parquet file
    scratch: Path  # private to this attempt, removed at its end
    monitor: Monitor
    results: ObjectStorage
    profiles: ProfileCache  # a column profiled by one step serves the later ones
    compute: ComputeLimits


# Storage blips are retried in place with backoff before the whole attempt is given up.
storage_retry = retry(
    retry=retry_if_exception_type(StorageUnavailable),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.5, max=8),
    reraise=True,
)


def artifact_prefix(job_id: UUID, attempt: int) -> str:
    return f"jobs/{job_id}/attempt-{attempt}/"


def run_job(
    new_uow: Callable[[], UnitOfWork],
    datasets: ObjectStorage,
    results: ObjectStorage,
    job_id: UUID,
    *,
    worker_id: str,
    workdir: Path,
    engine: EngineSettings,
    compute: ComputeLimits,
    is_transient: Callable[[BaseException], bool],
) -> Outcome:
    """Claim a queued job and run its steps; every terminal write is a compare-and-set."""
    uow = new_uow()
    with uow:
        claimed = claim_job(uow, job_id, worker_id)
        if claimed is None:
            return Outcome.skipped
        dataset_id = claimed.dataset_id
        dataset = uow.datasets.get_for_worker(dataset_id) if dataset_id else None
        if dataset is None or dataset.status != DatasetStatus.ready:
            return Outcome.skipped  # leaving the block rolls the claim (and `started`) back
        uow.commit()

    attempt = claimed.attempts
    scratch: Path | None = None
    step_index: int | None = None
    try:
        for earlier in range(1, attempt):  # files a dead earlier attempt may have left
            storage_retry(results.delete_prefix)(artifact_prefix(job_id, earlier))
        workdir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=workdir))
        with Monitor(new_uow(), job_id, attempt, engine.heartbeat_interval_s) as monitor:
            source = scratch / "data.parquet"
            storage_retry(datasets.download_file)(dataset.parquet_key or "", source)
            run = Attempt(
                job=claimed,
                dataset=dataset,
                source=source,
                scratch=scratch,
                monitor=monitor,
                results=results,
                profiles=ProfileCache(),
                compute=compute,
            )
            artifacts: list[Artifact] = []
            summaries: list[dict[str, Any]] = []
            for step_index, step in enumerate(claimed.steps):
                monitor.check()
                summary, produced = _run_step(run, step_index)
                summaries.append({"processor": step.processor, "summary": summary})
                artifacts += produced
            monitor.check()
            return _complete(uow, run, summaries, artifacts)
    except JobCancelled:
        _discard(results, job_id, attempt)
        return _cancelled(uow, claimed)
    except JobLost:
        _discard(results, job_id, attempt)
        return Outcome.lost
    except (ProcessorInputError, ParamsError) as exc:
        _discard(results, job_id, attempt)
        error = _error(claimed, step_index, exc)
        error |= {
            k: getattr(exc, k)
            for k in ("column", "row", "field")
            if getattr(exc, k, None) is not None
        }
        return _end(uow, claimed, JobStatus.failed, message="failed", error=error)
    except Exception as exc:
        _discard(results, job_id, attempt)
        error = _error(claimed, step_index, exc)
        if is_transient(exc) and attempt < engine.max_attempts:
            log.warning("job %s attempt %d hit a transient error: %s", job_id, attempt, exc)
            return _requeue(uow, claimed, error)
        log.exception("job %s failed", job_id)
        return _end(uow, claimed, JobStatus.failed, message="failed", error=error)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _discard(results: ObjectStorage, job_id: UUID, attempt: int) -> None:
    """Best effort: an attempt's files are never recorded, so a leftover is only wasted space."""
    try:
        results.delete_prefix(artifact_prefix(job_id, attempt))
    except Exception:
        log.warning("could not delete the files of job %s attempt %d", job_id, attempt)


def _cancelled(uow: UnitOfWork, job: Job) -> Outcome:
    return _end(uow, job, JobStatus.cancelled, message="cancelled", reason="cancel requested")


def _requeue(uow: UnitOfWork, job: Job, error: dict[str, Any]) -> Outcome:
    """Back to queued for another attempt, unless the user asked to cancel meanwhile."""
    with uow:
        current = uow.jobs.get_for_worker(job.id)
    if current is not None and current.cancel_requested:
        return _cancelled(uow, job)
    with uow:
        move_job(
            uow,
            job.id,
            JobStatus.running,
            JobStatus.queued,
            attempt=job.attempts,
            event_type="retried",
            payload={"attempt": job.attempts, "error": error},
            worker_id=None,
            message=f"retrying after: {error['message']}",
        )
        uow.commit()
    return Outcome.retry


def _run_step(run: Attempt, index: int) -> tuple[dict[str, Any], list[Artifact]]:
    """Run one step on the local copy and store what it wrote under the attempt's prefix."""
    job, monitor = run.job, run.monitor
    step = job.steps[index]
    processor = get_processor(step.processor)
    assert processor is not None, "steps are validated at submit"
    params = validate_step(step.processor, step.params, run.dataset.columns)
    monitor.record(event(job.id, "step_started", step=index, processor=step.processor))
    n = len(job.steps)
    output_dir = run.scratch / f"step-{index}"
    output_dir.mkdir()
    same_before = sum(1 for s in job.steps[:index] if s.processor == step.processor)
    output = processor.run(
        StepInput(
            parquet_path=run.source,
            columns=run.dataset.columns or [],
            dataset_format=run.dataset.format,
            output_dir=output_dir,
            artifact_suffix=f"-{same_before + 1}" if same_before else "",
            report=lambda fraction, message: monitor.report(
                (index + max(0.0, min(1.0, fraction))) / n, f"{step.processor}: {message}", index
            ),
            limits=run.compute,
            spill_dir=run.scratch.parent,
            profiles=run.profiles,
        ),
        params,
    )
    produced = []
    for file in output.artifacts:
        monitor.check()
        key = artifact_prefix(job.id, job.attempts) + file.name
        storage_retry(run.results.put_file)(key, file.path, content_type=file.content_type)
        produced.append(
            Artifact(
                job_id=job.id,
                name=file.name,
                content_type=file.content_type,
                size_bytes=file.path.stat().st_size,
                sha256=file.sha256 or _sha256(file.path),
                storage_key=key,
                created_at=datetime.now(UTC),
            )
        )
    monitor.record(
        event(
            job.id,
            "step_completed",
            step=index,
            processor=step.processor,
            artifacts=[a.name for a in produced],
        )
    )
    return output.summary, produced


def _complete(
    uow: UnitOfWork, run: Attempt, summaries: list[dict[str, Any]], artifacts: list[Artifact]
) -> Outcome:
    job = run.job
    # The step events not written yet go in the same transaction, before `completed`.
    with run.monitor.pending_events() as pending, uow:
        if not complete_job(uow, job, {"steps": summaries}, artifacts, pending):
            # Cancelled or reaped meanwhile: this attempt's files are not the result.
            uow.rollback()
            run.results.delete_prefix(artifact_prefix(job.id, job.attempts))
            return Outcome.lost
        uow.commit()
    return Outcome.completed


def _end(uow: UnitOfWork, job: Job, status: JobStatus, *, message: str, **payload: Any) -> Outcome:
    with uow:
        changes = {"error": payload["error"]} if "error" in payload else {}
        if not move_job(
            uow,
            job.id,
            JobStatus.running,
            status,
            attempt=job.attempts,
            payload=payload,
            message=message,
            **changes,
        ):
            return Outcome.lost
        uow.commit()
    return Outcome(status.value)


def _error(job: Job, step_index: int | None, exc: BaseException) -> dict[str, Any]:
    step = job.steps[step_index].processor if step_index is not None else None
    return {"step": step_index, "processor": step, "type": type(exc).__name__, "message": str(exc)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
