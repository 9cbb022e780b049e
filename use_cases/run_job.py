"""The job engine's worker side: claim, run steps with heartbeat and cancel checks, finish once."""

import enum
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage, StorageUnavailable
from schemas.domain.records import Artifact, Dataset, DatasetStatus, Job, JobEvent, JobStatus
from services.processing.processors.base import (
    JobCancelled,
    ParamsError,
    ProcessorInputError,
    StepInput,
)
from services.processing.processors.numeric import ProfileCache
from services.processing.processors.registry import get_processor, validate_step
from use_cases.jobs import event, move

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    skipped = "skipped"  # not claimable: a duplicate delivery, cancelled, or dataset not ready
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    retry = "retry"  # put back to queued after a transient error; publish again later
    lost = "lost"  # another party (the reaper, a cancel) took the job over mid-run


class JobLost(Exception):
    """The job is no longer running this attempt; stop without writing anything."""


@dataclass(frozen=True)
class EngineLimits:
    heartbeat_interval_s: float = 0.5
    max_attempts: int = 3
    memory_limit: str = "512MiB"  # DuckDB's, per step
    batch_memory_bytes: int = 512 * 1024**2  # numpy column values held at once
    threads: int | None = None


class Monitor:
    """Heartbeat thread: writes liveness, progress and step events, notices cancel requests,
    off the job's path."""

    def __init__(self, uow: UnitOfWork, job_id: UUID, attempt: int, interval_s: float) -> None:
        self._uow, self._job_id, self._attempt = uow, job_id, attempt
        self._interval_s = interval_s
        self.progress, self.message, self.step = 0.0, "started", 0
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._pending: list[JobEvent] = []
        self._pending_lock = threading.Lock()
        # One writer of the job's events at a time: ids are then in commit order, which a
        # stream resuming after an id relies on.
        self._writing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)
        self._last_event_progress = -1.0
        self._last_event_at = 0.0

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:  # what a failed or cancelled run recorded precedes its terminal event
            with self._writing:
                self._write(beat=False)
        except Exception:
            log.warning("could not record the events of %s", self._job_id, exc_info=True)

    def report(self, progress: float, message: str, step: int) -> None:
        """Called by processors; raises to stop the step when the job was cancelled or lost."""
        self.progress, self.message, self.step = max(self.progress, progress), message, step
        self.check()

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost()
        if self.cancelled.is_set():
            raise JobCancelled()

    def record(self, job_event: JobEvent) -> None:
        """Queue a history event (a step started or completed) for the next beat, or for the
        transaction that ends the job if that comes first."""
        with self._pending_lock:
            self._pending.append(job_event)

    @contextmanager
    def pending_events(self) -> Iterator[list[JobEvent]]:
        """The events not written yet, for the caller's transaction (none is written meanwhile);
        put back if the block raises."""
        with self._writing:
            pending = self._take_pending()
            try:
                yield pending
            except BaseException:
                self._put_back(pending)
                raise

    def _take_pending(self) -> list[JobEvent]:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        return pending

    def _put_back(self, events: list[JobEvent]) -> None:
        with self._pending_lock:
            self._pending[:0] = events

    def _loop(self) -> None:
        # One short UPDATE per period both proves liveness and reads the cancel flag.
        while not self._stop.wait(self._interval_s):
            try:
                with self._writing:
                    self._write(beat=True)
            except Exception:  # a DB hiccup must not kill the heartbeat; the next beat retries
                log.warning("heartbeat of %s failed", self._job_id, exc_info=True)

    def _write(self, *, beat: bool) -> None:
        """The pending events and, on a beat, liveness and progress, in one transaction."""
        pending = self._take_pending()
        if not pending and not beat:
            return
        try:
            with self._uow:
                self._uow.job_events.add_many(pending)
                if beat and not self._beat():
                    return
                # History, liveness and progress: none needs to wait for the disk.
                self._uow.commit(durable=False)
        except BaseException:
            self._put_back(pending)
            raise

    def _beat(self) -> bool:
        """Heartbeat and progress in the open transaction; False when the job is lost."""
        progress = round(self.progress, 4)
        cancel = self._uow.jobs.heartbeat(
            self._job_id,
            self._attempt,
            datetime.now(UTC),
            progress=progress,
            message=self.message,
            current_step=self.step,
        )
        if cancel is None:
            self.lost.set()
            return False
        if cancel:
            self.cancelled.set()
        now = time.monotonic()
        if progress > self._last_event_progress + 0.005 and now - self._last_event_at >= 1.0:
            self._uow.job_events.add(
                event(
                    self._job_id,
                    "progress",
                    progress=progress,
                    message=self.message,
                    step=self.step,
                )
            )
            self._last_event_progress, self._last_event_at = progress, now
        return True


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
    limits: EngineLimits,
    is_transient: Callable[[BaseException], bool],
) -> Outcome:
    """Claim a queued job and run its steps; every terminal write is a compare-and-set."""
    uow = new_uow()
    with uow:
        claimed = uow.jobs.claim(job_id, worker_id, datetime.now(UTC))
        if claimed is None:
            return Outcome.skipped
        dataset = uow.datasets.get(claimed.dataset_id) if claimed.dataset_id else None
        if dataset is None or dataset.status != DatasetStatus.ready:
            return Outcome.skipped  # leaving the block rolls the claim back
        uow.job_events.add(event(job_id, "started", attempt=claimed.attempts, worker_id=worker_id))
        uow.commit()

    attempt = claimed.attempts
    scratch: Path | None = None
    step_index: int | None = None
    try:
        for earlier in range(1, attempt):  # files a dead earlier attempt may have left
            storage_retry(results.delete_prefix)(artifact_prefix(job_id, earlier))
        workdir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=workdir))
        with Monitor(new_uow(), job_id, attempt, limits.heartbeat_interval_s) as monitor:
            source = scratch / "data.parquet"
            storage_retry(datasets.download_file)(dataset.parquet_key or "", source)
            artifacts: list[Artifact] = []
            summaries: list[dict[str, Any]] = []
            profiles = ProfileCache()  # a column profiled by one step serves the later ones
            for step_index, step in enumerate(claimed.steps):
                monitor.check()
                summary, produced = _run_step(
                    results,
                    claimed,
                    step_index,
                    source,
                    dataset,
                    scratch,
                    monitor,
                    limits,
                    profiles,
                )
                summaries.append({"processor": step.processor, "summary": summary})
                artifacts += produced
            monitor.check()
            return _complete(uow, results, claimed, summaries, artifacts, monitor)
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
        if is_transient(exc) and attempt < limits.max_attempts:
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
        current = uow.jobs.get(job.id)
    if current is not None and current.cancel_requested:
        return _cancelled(uow, job)
    with uow:
        move(
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


def _run_step(
    results: ObjectStorage,
    job: Job,
    index: int,
    source: Path,
    dataset: Dataset,
    scratch: Path,
    monitor: Monitor,
    limits: EngineLimits,
    profiles: ProfileCache,
) -> tuple[dict[str, Any], list[Artifact]]:
    """Run one step on the local copy and store what it wrote under the attempt's prefix."""
    step = job.steps[index]
    processor = get_processor(step.processor)
    assert processor is not None, "steps are validated at submit"
    params = validate_step(step.processor, step.params, dataset.columns)
    monitor.record(event(job.id, "step_started", step=index, processor=step.processor))
    n = len(job.steps)
    output_dir = scratch / f"step-{index}"
    output_dir.mkdir()
    same_before = sum(1 for s in job.steps[:index] if s.processor == step.processor)
    output = processor.run(
        StepInput(
            parquet_path=source,
            columns=dataset.columns or [],
            dataset_format=dataset.format,
            output_dir=output_dir,
            artifact_suffix=f"-{same_before + 1}" if same_before else "",
            report=lambda fraction, message: monitor.report(
                (index + max(0.0, min(1.0, fraction))) / n, f"{step.processor}: {message}", index
            ),
            memory_limit=limits.memory_limit,
            batch_memory_bytes=limits.batch_memory_bytes,
            threads=limits.threads,
            spill_dir=scratch.parent,
            profiles=profiles,
        ),
        params,
    )
    produced = []
    for file in output.artifacts:
        monitor.check()
        key = artifact_prefix(job.id, job.attempts) + file.name
        storage_retry(results.put_file)(key, file.path, content_type=file.content_type)
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
    uow: UnitOfWork,
    results: ObjectStorage,
    job: Job,
    summaries: list[dict[str, Any]],
    artifacts: list[Artifact],
    monitor: Monitor,
) -> Outcome:
    now = datetime.now(UTC)
    # The step events not written yet go in the same transaction, before `completed`.
    with monitor.pending_events() as pending, uow:
        done = uow.jobs.transition(
            job.id,
            [JobStatus.running],
            JobStatus.completed,
            attempt=job.attempts,
            result={"steps": summaries},
            progress=1.0,
            message="completed",
            finished_at=now,
        )
        if not done:  # cancelled or reaped meanwhile: this attempt's files are not the result
            uow.rollback()
            results.delete_prefix(artifact_prefix(job.id, job.attempts))
            return Outcome.lost
        for artifact in artifacts:
            uow.artifacts.add(artifact)
        completed = event(job.id, "completed", artifacts=[a.name for a in artifacts])
        uow.job_events.add_many([*pending, completed])
        uow.commit()
    return Outcome.completed


def _end(uow: UnitOfWork, job: Job, status: JobStatus, *, message: str, **payload: Any) -> Outcome:
    with uow:
        changes = {"error": payload["error"]} if "error" in payload else {}
        if not move(
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
