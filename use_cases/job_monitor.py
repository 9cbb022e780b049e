"""The heartbeat of a running job: liveness, progress and step events, and the cancel flag."""

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from uuid import UUID

from ports.repositories import UnitOfWork
from schemas.domain.records import JobEvent
from services.processing.processors.base import JobCancelled, MemoryBudgetExceeded
from services.processing.sandbox import private_resident
from use_cases.lifecycle import event

log = logging.getLogger(__name__)


class JobLost(Exception):
    """The job is no longer running this attempt; stop without writing anything."""


class Monitor:
    """Heartbeat thread: writes liveness, progress and step events, notices cancel requests,
    off the job's path.

    With a memory budget it also compares, at every beat, this process's private resident
    memory with what it held when the job started: a job run in-process that grew past the
    budget fails at its next progress report (DuckDB's limit bounds DuckDB meanwhile).
    """

    def __init__(
        self,
        uow: UnitOfWork,
        job_id: UUID,
        attempt: int,
        interval_s: float,
        *,
        memory_budget_mb: int | None = None,
    ) -> None:
        self._uow, self._job_id, self._attempt = uow, job_id, attempt
        self._interval_s = interval_s
        self.progress, self.message, self.step = 0.0, "started", 0
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.over_budget = threading.Event()
        self._budget_mb = memory_budget_mb
        self._memory_base = private_resident(os.getpid()) if memory_budget_mb else None
        self._stop = threading.Event()
        self._pending: list[JobEvent] = []
        self._pending_lock = threading.Lock()
        # One writer of the job's events at a time: ids are then in commit order, which a
        # stream resuming after an id relies on.
        self._writing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)
        self._last_event_progress = -1.0
        self._last_event_at = 0.0
        self._started_at = time.monotonic()

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
        self.update(progress, message, step)
        self.check()

    def update(self, progress: float, message: str, step: int) -> None:
        """Progress to write at the next beat (it never goes back)."""
        self.progress, self.message, self.step = max(self.progress, progress), message, step

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost()
        if self.cancelled.is_set():
            raise JobCancelled()
        if self.over_budget.is_set():
            raise MemoryBudgetExceeded(self._budget_mb)

    def watch_memory(self, on: bool) -> None:
        """Whether the beats compare this process's memory with the budget (off when the job
        runs in a child process, which is watched instead)."""
        if not on:
            self._memory_base = None

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
            self._check_memory()
            try:
                with self._writing:
                    self._write(beat=True)
            except Exception:  # a DB hiccup must not kill the heartbeat; the next beat retries
                log.warning("heartbeat of %s failed", self._job_id, exc_info=True)

    def _check_memory(self) -> None:
        base, budget = self._memory_base, self._budget_mb
        if base is None or budget is None:
            return
        grown = (private_resident(os.getpid()) or base) - base
        if grown > budget * 1024**2 and not self.over_budget.is_set():
            log.warning("job %s grew by %d MiB, over its budget", self._job_id, grown // 1024**2)
            self.over_budget.set()

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
                    eta_seconds=eta_seconds(progress, now - self._started_at),
                )
            )
            self._last_event_progress, self._last_event_at = progress, now
        return True


# Below this much progress or time, a rate says little about what remains.
ETA_MIN_PROGRESS = 0.02
ETA_MIN_ELAPSED_S = 1.0


def eta_seconds(progress: float, elapsed_s: float) -> float | None:
    """Seconds left at the attempt's average rate so far; None until it can be estimated."""
    if progress < ETA_MIN_PROGRESS or elapsed_s < ETA_MIN_ELAPSED_S or progress >= 1.0:
        return None
    return round(elapsed_s * (1.0 - progress) / progress, 1)
