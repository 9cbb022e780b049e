"""Prometheus metrics of `assay worker`: recorded in every pool process, served by the main one.

With `--metrics-port` the CLI points PROMETHEUS_MULTIPROC_DIR at a folder of its own before
anything imports prometheus_client: each process writes its samples there, the main process
adds them up on every scrape. Without it they stay in each process, unread, and nothing here
reads the database.

Jobs are observed around the run_job call, from what the job's events recorded (claim time,
steps, error), so the use cases know nothing of metrics. Figures that only the database knows
(queue depth and age, heartbeat age, totals) are the API's /metrics.
"""

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import HTTPServer
from uuid import UUID

from celery.signals import worker_process_init
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ports.repositories import UnitOfWork
from schemas.domain.records import Dataset, Job, JobEvent, KeyScope, Principal
from workers.celery_app import log_context

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PAGE = os.sysconf("SC_PAGE_SIZE")

# This process's own samples (read by tests; in multiprocess mode they also go to the files).
REGISTRY = CollectorRegistry()
# Seconds: from tens of milliseconds (small jobs) to the hard time limit's order.
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS_STARTED = Counter("assay_jobs_started", "Job attempts claimed by a worker.", registry=REGISTRY)
JOBS_FINISHED = Counter(
    "assay_jobs_finished",
    "Jobs a worker's attempt ended, by status (completed, failed, cancelled): one per job.",
    ["status"],
    registry=REGISTRY,
)
JOBS_REQUEUED = Counter(
    "assay_jobs_requeued",
    "Attempts a worker put back in the queue after a transient error.",
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "assay_job_attempt_duration_seconds",
    "An attempt from its claim to its end, by outcome.",
    ["status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "assay_job_queue_wait_seconds",
    "From queued (created, or put back for another attempt) to claimed by a worker.",
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
STEPS = Counter(
    "assay_job_steps",
    "Steps by processor and how they ended: completed, or failed, cancelled, requeued or lost "
    "(the attempt ended so while the step ran).",
    ["processor", "status"],
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "assay_job_step_duration_seconds",
    "Completed steps' run time, by processor.",
    ["processor"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
FAILURES = Counter(
    "assay_job_failures",
    "Failed jobs by the processor of the failing step ('none' before any step) and error type.",
    ["processor", "error_type"],
    registry=REGISTRY,
)
ROWS = Counter(
    "assay_processed_rows",
    "Rows read: by completed jobs (stage=job) and by validations (stage=validation).",
    ["stage"],
    registry=REGISTRY,
)
BYTES = Counter(
    "assay_processed_bytes",
    "Bytes of the datasets completed jobs read and validations ingested (as uploaded).",
    ["stage"],
    registry=REGISTRY,
)
VALIDATION_SECONDS = Histogram(
    "assay_validation_duration_seconds",
    "Dataset validations and URL imports by kind and outcome (ready, failed, retry, skipped).",
    ["kind", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
REAPER_ACTIONS = Counter(
    "assay_reaper_actions",
    "Records the recovery loop acted on (requeued, ended or published again), by kind.",
    ["kind"],
    registry=REGISTRY,
)

_server: HTTPServer | None = None


def enabled() -> bool:
    """Whether samples are served (the worker was started with --metrics-port)."""
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


def serve_metrics(host: str, port: int) -> None:
    """Serve every process's samples on host:port from a thread of this (the main) process."""
    global _server
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        raise RuntimeError(f"{MULTIPROC_DIR_ENV} must be set before the worker starts")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)
    registry.register(WorkerMemoryCollector(os.getpid()))
    _server, _ = start_http_server(port, addr=host, registry=registry)


class WorkerMemoryCollector(Collector):
    """Resident memory of the worker read from /proc at scrape time: its main process, and its
    pool processes with the children they compute in, added up and the largest one."""

    def __init__(self, main_pid: int) -> None:
        self._main = main_pid

    def collect(self) -> Iterator[GaugeMetricFamily]:
        main = _resident(self._main)
        if main is None:
            return  # no /proc here
        pool = [r for pid in _descendants(self._main) if (r := _resident(pid)) is not None]
        memory = GaugeMetricFamily(
            "assay_worker_resident_memory_bytes",
            "Resident memory of the worker: main process, and pool processes added up.",
            labels=["process"],
        )
        memory.add_metric(["main"], main)
        memory.add_metric(["pool"], sum(pool))
        yield memory
        yield GaugeMetricFamily(
            "assay_worker_process_max_resident_memory_bytes",
            "Resident memory of the largest pool process (or its compute child).",
            value=max(pool, default=0),
        )


def _resident(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from each process's parent id in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # The name (field 2) may hold spaces and parentheses: split after its last ")".
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children.get(pid, [])
    return found


@worker_process_init.connect
def _close_inherited_server(**_: object) -> None:
    """In a forked pool process: close its copy of the listening socket (only the main process
    serves, and a leftover copy would keep the port taken after it exits)."""
    if _server is not None:
        _server.socket.close()


# --- jobs ----------------------------------------------------------------------------------

# Events that put a job in the queue: its queue wait runs from the latest one to the claim.
_QUEUED_BY = {"created", "retried", "requeued"}
_ENDED_BY = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}
EVENT_PAGE = 1000
MAX_EVENT_PAGES = 20  # a job's events are read back at most this far (progress is ~1/s)


@dataclass
class JobTrace:
    """A job as a worker is about to run it: its record and its events so far."""

    job_id: UUID
    job: Job | None = None
    events: list[JobEvent] = field(default_factory=list)

    @property
    def request_id(self) -> str | None:
        created = next((e for e in self.events if e.type == "created"), None)
        value = created.payload.get("request_id") if created else None
        return value if isinstance(value, str) else None

    def log_fields(self) -> dict[str, object]:
        """The log context of the job's attempt (the attempt the claim will make)."""
        fields: dict[str, object] = {"job_id": str(self.job_id)}
        if self.job is not None:
            fields |= {
                "owner": self.job.owner_id,
                "dataset_id": str(self.job.dataset_id) if self.job.dataset_id else None,
                "attempt": self.job.attempts + 1,
                "request_id": self.request_id,
            }
        return fields


def read_trace(new_uow: Callable[[], UnitOfWork], job_id: UUID) -> JobTrace:
    """The job and its events before the attempt (an empty trace if they cannot be read)."""
    trace = JobTrace(job_id)
    try:
        with new_uow() as uow:
            trace.job = uow.jobs.get_for_worker(job_id)
            if trace.job is not None:
                trace.events = _events(uow, trace.job, after_id=0)
    except Exception:  # the attempt itself will meet (and report) an unreachable database
        pass
    return trace


def _events(uow: UnitOfWork, job: Job, after_id: int) -> list[JobEvent]:
    # The owner's own read: the worker reads the job's events as its owner would.
    owner = Principal(owner_id=job.owner_id, scope=KeyScope.read)
    events: list[JobEvent] = []
    for _ in range(MAX_EVENT_PAGES):
        page = uow.job_events.list_for_job(owner, job.id, after_id=after_id, limit=EVENT_PAGE)
        events += page
        if len(page) < EVENT_PAGE:
            break
        after_id = page[-1].id or after_id
    return events


@contextmanager
def traced_job(new_uow: Callable[[], UnitOfWork], job_id: UUID) -> Iterator[JobTrace]:
    """Run a job's attempt with its log context (job, owner, dataset, attempt, request id)."""
    trace = read_trace(new_uow, job_id)
    with log_context(**trace.log_fields()):
        yield trace


def observe_attempt(
    new_uow: Callable[[], UnitOfWork], trace: JobTrace, outcome: str, seconds: float
) -> None:
    """Record what one attempt did, from the events it wrote; best effort, never raises."""
    if not enabled() or trace.job is None or outcome == "skipped":
        return
    try:
        _observe(new_uow, trace, trace.job, outcome, seconds)
    except Exception:  # metrics must never fail a job
        import logging

        logging.getLogger(__name__).warning("could not record the metrics of a job", exc_info=True)


def _observe(
    new_uow: Callable[[], UnitOfWork], trace: JobTrace, job: Job, outcome: str, seconds: float
) -> None:
    last_seen = max((e.id or 0 for e in trace.events), default=0)
    with new_uow() as uow:
        events = _events(uow, job, after_id=last_seen)
        dataset = None
        if outcome == "completed" and job.dataset_id is not None:
            dataset = uow.datasets.get_for_worker(job.dataset_id)
    claimed = next((e for e in events if e.type == "started"), None)
    if claimed is None:
        return  # not this worker's claim after all
    JOBS_STARTED.inc()
    queued = [e for e in trace.events if e.type in _QUEUED_BY]
    if queued:
        QUEUE_WAIT.observe(_seconds(queued[-1].created_at, claimed.created_at))
    JOB_SECONDS.labels(outcome).observe(seconds)
    _observe_steps(events, outcome)
    if outcome in _ENDED_BY:
        JOBS_FINISHED.labels(_ENDED_BY[outcome]).inc()
    if outcome == "retry":
        JOBS_REQUEUED.inc()
    if outcome == "failed":
        ended = next((e for e in reversed(events) if e.type == "failed"), None)
        error = (ended.payload.get("error") if ended else None) or {}
        FAILURES.labels(error.get("processor") or "none", error.get("type") or "unknown").inc()
    if dataset is not None:
        _count_read(dataset, "job")


def _observe_steps(events: list[JobEvent], outcome: str) -> None:
    started: dict[int, JobEvent] = {}
    for event in events:
        step = event.payload.get("step")
        if not isinstance(step, int):
            continue
        if event.type == "step_started":
            started[step] = event
        elif event.type == "step_completed" and step in started:
            begun = started.pop(step)
            processor = str(event.payload.get("processor"))
            STEPS.labels(processor, "completed").inc()
            STEP_SECONDS.labels(processor).observe(_seconds(begun.created_at, event.created_at))
    ended = {"retry": "requeued"}.get(outcome, outcome)
    for begun in started.values():  # the step the attempt ended in
        STEPS.labels(str(begun.payload.get("processor")), ended).inc()


def _count_read(dataset: Dataset, stage: str) -> None:
    ROWS.labels(stage).inc((dataset.row_count or 0) + (dataset.failed_row_count or 0))
    BYTES.labels(stage).inc(dataset.size_bytes or 0)


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


# --- validations ---------------------------------------------------------------------------


@contextmanager
def traced_validation(
    new_uow: Callable[[], UnitOfWork], dataset_id: UUID, kind: str
) -> Iterator[Callable[[str], None]]:
    """Run a validation (or import) with its log context; call the yielded function with its
    outcome to have it timed and counted."""
    owner = None
    try:
        with new_uow() as uow:
            dataset = uow.datasets.get_for_worker(dataset_id)
            owner = dataset.owner_id if dataset is not None else None
    except Exception:  # the validation itself will meet (and report) it
        pass
    started = time.monotonic()

    def done(status: str) -> None:
        VALIDATION_SECONDS.labels(kind, status).observe(time.monotonic() - started)
        if not enabled() or status not in ("ready", "failed"):
            return
        try:
            with new_uow() as uow:
                validated = uow.datasets.get_for_worker(dataset_id)
            if validated is not None:
                _count_read(validated, "validation")
        except Exception:  # metrics must never fail a validation
            pass

    with log_context(dataset_id=str(dataset_id), owner=owner):
        yield done
