"""Wake-ups for readers waiting on a job's events (the SSE stream).

A wake-up only says "this job may have new events": readers always read the events from the
database, and re-read at least every `poll_interval_s` even without one, so a lost wake-up
delays a reader but never hangs it.
"""

from contextlib import AbstractAsyncContextManager
from typing import Protocol
from uuid import UUID


class WakeupSubscription(Protocol):
    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up of the job, at most `timeout` seconds; True when woken.

        Wake-ups that arrived since the previous wait are not lost: the wait returns at once.
        """
        ...


class JobWakeups(Protocol):
    """Per process: who waits for which job, and how a new event reaches them."""

    @property
    def poll_interval_s(self) -> float:
        """How long a reader waits before re-reading anyway."""
        ...

    def subscribe(self, job_id: UUID) -> AbstractAsyncContextManager[WakeupSubscription]:
        """Wake-ups of one job for as long as the block lasts; subscribe before the first read."""
        ...

    async def start(self) -> None:
        """Begin listening (idempotent); subscribe() also starts it when needed."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release connections."""
        ...
