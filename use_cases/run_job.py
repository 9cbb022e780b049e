"""The job engine's worker side: claim, run steps with heartbeat and cancel checks, finish once.

Every status write goes through use_cases/lifecycle.py; the heartbeat is use_cases/job_monitor.py.
"""

import enum
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from ports.repositories import DatabaseUnavailable, UnitOfWork
from ports.storage import ObjectStorage, StorageUnavailable
from schemas.domain.records import Artifact, Dataset, DatasetStatus, Job, JobStatus
from services.processing.processors.base import (
    ComputeLimits,
    JobCancelled,
    MemoryBudgetExceeded,
    ParamsError,
    ProcessorInputError,
    StepInput,
    StepOutput,
)
from services.processing.processors.copy_names import (
    copy_columns,
    copy_renames,
    renamed,
    with_dataset_names,
)
from services.processing.processors.duck import decoded_size_at_most, out_of_memory
from services.processing.processors.numeric import CACHE_SHARE, ProfileCache
from services.processing.processors.registry import get_processor, validate_step
from services.processing.sandbox import Ceiling, Channel, Child, ChildStopped
from use_cases.job_monitor import JobLost, Monitor
from use_cases.lifecycle import claim_job, complete_job, event, move_job
from use_cases.scratch import owner_suffix

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
    # The memory a job may take (ASSAY_WORKER_MEMORY_BUDGET_MB): a job that is not provably
    # small runs in a child process killed above it. None: every job in-process, unwatched.
    memory_budget_mb: int | None = None
    # Jobs whose input is at most this big decoded, and this wide, run in-process: forking
    # and opening DuckDB in a child would cost them more than their work (~20 ms).
    in_process_bytes: int = 16 * 1024**2
    in_process_columns: int = 256
    # How long an attempt whose completing COMMIT lost its connection keeps asking whether it
    # took, before leaving the job to the reaper (its files are kept either way).
    completion_read_back_s: float = 30.0


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
    steps = _Steps(claimed)
    try:
        for earlier in range(1, attempt):  # files a dead earlier attempt may have left
            storage_retry(results.delete_prefix)(artifact_prefix(job_id, earlier))
        workdir.mkdir(parents=True, exist_ok=True)
        # Named for this process: the recovery loop removes it if the process dies.
        scratch = Path(
            tempfile.mkdtemp(prefix=f"job-{job_id}-", suffix=owner_suffix(), dir=workdir)
        )
        budget = engine.memory_budget_mb
        with Monitor(
            new_uow(),
            job_id,
            attempt,
            engine.heartbeat_interval_s,
            memory_budget_mb=budget,
        ) as monitor:
            source = scratch / "data.parquet"
            storage_retry(datasets.download_file)(dataset.parquet_key or "", source)
            run = Attempt(
                job=claimed,
                dataset=dataset,
                source=source,
                scratch=scratch,
                monitor=monitor,
                results=results,
                profiles=ProfileCache(max_bytes=compute.batch_memory_bytes // CACHE_SHARE),
                compute=compute,
            )
            if budget is not None and (_isolated(claimed) or not _small(source, engine)):
                monitor.watch_memory(False)  # the child's memory is watched instead
                _run_in_child(run, budget, steps)
            else:
                _run_in_process(run, budget, steps)
            monitor.check()
            return _complete(new_uow, uow, run, steps, engine.completion_read_back_s)
    except CompletionUnknown as exc:
        # Maybe completed: its files may be the job's result, so they stay. If the commit did
        # not take, the job's heartbeat is silent now and the reaper gives it another attempt,
        # which removes them.
        log.warning("job %s attempt %d: %s", job_id, attempt, exc)
        return Outcome.lost
    except JobCancelled:
        _discard(results, job_id, attempt)
        return _cancelled(uow, claimed)
    except JobLost:
        _discard(results, job_id, attempt)
        return Outcome.lost
    except (ProcessorInputError, ParamsError) as exc:
        _discard(results, job_id, attempt)
        error = _error(claimed, steps.index, exc)
        error |= {
            k: getattr(exc, k)
            for k in ("column", "row", "field")
            if getattr(exc, k, None) is not None
        }
        return _end(uow, claimed, JobStatus.failed, message="failed", error=error)
    except MemoryBudgetExceeded as exc:  # the same input would need as much again: no retry
        _discard(results, job_id, attempt)
        log.warning("job %s attempt %d %s", job_id, attempt, exc)
        error = _error(claimed, steps.index, exc)
        return _end(uow, claimed, JobStatus.failed, message="failed", error=error)
    except Exception as exc:
        _discard(results, job_id, attempt)
        error = _error(claimed, steps.index, exc)
        if is_transient(exc):  # its text names hosts, ports or paths: those go to the log only
            error["message"] = f"{_dependency(exc)} was unavailable ({error['type']})"
        if is_transient(exc) and attempt < engine.max_attempts:
            log.warning("job %s attempt %d hit a transient error: %s", job_id, attempt, exc)
            return _requeue(uow, claimed, error)
        log.exception("job %s failed", job_id)
        return _end(uow, claimed, JobStatus.failed, message="failed", error=error)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class _Steps:
    """The attempt's steps as they run: which one runs (errors name it), what they made."""

    job: Job
    index: int | None = None
    summaries: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)

    def started(self, run: Attempt, index: int) -> None:
        self.index = index
        step = self.job.steps[index]
        run.monitor.record(event(self.job.id, "step_started", step=index, processor=step.processor))

    def finished(self, run: Attempt, index: int, output: StepOutput) -> None:
        """Store the step's files and record that it completed."""
        produced = _store(run, index, output)
        self.summaries.append(
            {"processor": self.job.steps[index].processor, "summary": output.summary}
        )
        self.artifacts += produced


def _isolated(job: Job) -> bool:
    """Whether a step fits a model a cancel could not interrupt in this process."""
    return any(getattr(get_processor(step.processor), "isolated", False) for step in job.steps)


def _small(source: Path, engine: EngineSettings) -> bool:
    """Whether the job's input is provably small enough to run in-process."""
    return decoded_size_at_most(source, engine.in_process_bytes, engine.in_process_columns)


def _run_in_process(run: Attempt, budget: int | None, steps: _Steps) -> None:
    """Every step in this process (the monitor fails the job when it grows over the budget)."""
    for index in range(len(run.job.steps)):
        run.monitor.check()
        steps.started(run, index)
        try:
            output = _compute(run, index, run.monitor.report, spill_dir=run.scratch.parent)
        except Exception as exc:
            if out_of_memory(exc):
                raise MemoryBudgetExceeded(budget, _first_line(exc)) from exc
            raise
        steps.finished(run, index, output)


def _run_in_child(run: Attempt, budget: int, steps: _Steps) -> None:
    """Every step in a child process under the memory ceiling; this process stores what
    each step made while the next one runs, and kills the child on a cancel."""
    ceiling = Ceiling.for_budget(budget, run.compute.threads)

    def work(channel: Channel) -> None:  # in the child
        def report(progress: float, message: str, step: int) -> None:
            channel.progress((progress, message, step))

        for index in range(len(run.job.steps)):
            channel.post(("started", index, None))
            try:
                output = _compute(run, index, report, spill_dir=run.scratch)
            except Exception as exc:
                if out_of_memory(exc):
                    raise MemoryBudgetExceeded(budget, _first_line(exc)) from exc
                raise
            channel.post(("finished", index, output))

    monitor = run.monitor
    child = Child(
        work,
        ceiling,
        stop=lambda: monitor.cancelled.is_set() or monitor.lost.is_set(),
        progress=lambda p: monitor.update(*p),
    )
    try:
        with child:
            for kind, index, output in child.messages():
                monitor.check()
                if kind == "started":
                    steps.started(run, index)
                else:
                    steps.finished(run, index, output)
    except ChildStopped:
        monitor.check()  # raises JobCancelled or JobLost
        raise JobCancelled() from None
    finally:
        log.info("job %s: its process took up to %d MiB", run.job.id, child.peak_bytes // 1024**2)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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


def _overall(run: Attempt, index: int, fraction: float) -> float:
    """A step's own progress (0..1) as the job's."""
    return (index + max(0.0, min(1.0, fraction))) / len(run.job.steps)


def _label(run: Attempt, index: int, message: str) -> str:
    return f"{run.job.steps[index].processor}: {message}"


def _compute(
    run: Attempt,
    index: int,
    report: Callable[[float, str, int], None],
    *,
    spill_dir: Path,
) -> StepOutput:
    """Run one step on the local copy; its files are in the attempt's scratch."""
    job = run.job
    step = job.steps[index]
    processor = get_processor(step.processor)
    assert processor is not None, "steps are validated at submit"
    dataset_columns = run.dataset.columns or []
    renames = copy_renames(dataset_columns)
    columns = copy_columns(dataset_columns, renames)
    params = validate_step(step.processor, renamed(step.params, renames), columns)
    output_dir = run.scratch / f"step-{index}"
    output_dir.mkdir()
    same_before = sum(1 for s in job.steps[:index] if s.processor == step.processor)
    output = processor.run(
        StepInput(
            parquet_path=run.source,
            columns=columns,
            dataset_format=run.dataset.format,
            output_dir=output_dir,
            artifact_suffix=f"-{same_before + 1}" if same_before else "",
            report=lambda fraction, message: report(
                _overall(run, index, fraction), _label(run, index, message), index
            ),
            limits=run.compute,
            spill_dir=spill_dir,
            profiles=run.profiles,
        ),
        params,
    )
    return with_dataset_names(output, renames)


def _store(run: Attempt, index: int, output: StepOutput) -> list[Artifact]:
    """Store what a step wrote under the attempt's prefix and record that it completed."""
    job, monitor = run.job, run.monitor
    step = job.steps[index]
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
    return produced


class CompletionUnknown(Exception):
    """The completing transaction may or may not have committed, and the job cannot be read."""


def _complete(
    new_uow: Callable[[], UnitOfWork],
    uow: UnitOfWork,
    run: Attempt,
    steps: _Steps,
    read_back_s: float,
) -> Outcome:
    job = run.job
    try:
        # The step events not written yet go in the same transaction, before `completed`.
        with run.monitor.pending_events() as pending, uow:
            result = {"steps": steps.summaries}
            if not complete_job(uow, job, result, steps.artifacts, pending):
                # Cancelled or reaped meanwhile: this attempt's files are not the result.
                uow.rollback()
                run.results.delete_prefix(artifact_prefix(job.id, job.attempts))
                return Outcome.lost
            uow.commit()
    except Exception as exc:
        # A connection lost during COMMIT leaves its outcome unknown: the job says which.
        if _completed_by(new_uow, job, exc, read_back_s):
            log.warning("job %s: completed, though its commit reported %s", job.id, exc)
            return Outcome.completed
        raise
    return Outcome.completed


def _completed_by(
    new_uow: Callable[[], UnitOfWork], job: Job, error: Exception, read_back_s: float
) -> bool:
    """Whether this attempt's completing transaction committed (read back, with retries)."""

    @retry(stop=stop_after_delay(read_back_s), wait=wait_exponential(0.2, max=3), reraise=True)
    def read() -> bool:
        with new_uow() as uow:
            # An UPDATE, not a plain read: it waits for the row lock of a COMMIT still in
            # flight on the server, so "still running" is final, not a view from before it.
            if uow.jobs.heartbeat(job.id, job.attempts, datetime.now(UTC)) is not None:
                uow.commit()
                return False
            current = uow.jobs.get_for_worker(job.id)
            return (
                current is not None
                and current.status == JobStatus.completed
                and current.attempts == job.attempts
            )

    try:
        return read()
    except Exception as exc:
        raise CompletionUnknown(f"could not learn whether it completed: {exc}") from error


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


def _dependency(exc: BaseException) -> str:
    """Which dependency a transient error came from, as a client may be told."""
    if isinstance(exc, StorageUnavailable):
        return "storage"
    if isinstance(exc, DatabaseUnavailable) or type(exc).__name__ in DATABASE_ERRORS:
        return "the database"
    return "a service"


# The database driver's and SQLAlchemy's connection errors, by name: the engine does not
# import the driver.
DATABASE_ERRORS = {"OperationalError", "InterfaceError"}


def _error(job: Job, step_index: int | None, exc: BaseException) -> dict[str, Any]:
    step = job.steps[step_index].processor if step_index is not None else None
    kind = getattr(exc, "type_name", None) or type(exc).__name__  # a child's error keeps its type
    return {"step": step_index, "processor": step, "type": kind, "message": str(exc)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
