"""Wake-ups by the clock alone: readers re-read every `poll_interval_s` (SQLite, tests).

Used where the database cannot notify: the embedded SQLite file, written by the worker in
another process. A query of a local SQLite file costs well under a millisecond, so a short
fixed interval keeps streams prompt at a small cost.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import anyio


class _Sleep:
    async def wait(self, timeout: float) -> bool:
        await anyio.sleep(timeout)
        return False


class PollingJobWakeups:
    """Never wakes anyone: readers poll at a fixed interval."""

    def __init__(self, poll_interval_s: float = 0.025) -> None:
        self._poll_interval_s = poll_interval_s

    @property
    def poll_interval_s(self) -> float:
        return self._poll_interval_s

    @asynccontextmanager
    async def subscribe(self, job_id: UUID) -> AsyncIterator[_Sleep]:
        yield _Sleep()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
