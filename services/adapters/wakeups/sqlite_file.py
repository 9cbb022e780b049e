"""Wake-ups from the SQLite file itself: every commit changes the database or its WAL.

The embedded worker writes the SQLite file from another process, which cannot notify the
API. In WAL mode each commit appends to (or, after a checkpoint, rewrites) the -wal file,
and a checkpoint rewrites the database file; so a stream that stats both every TICK_S
learns of a commit about as soon as a query would, for a few microseconds instead of two
queries per tick (polling by query took ~10% of a core per open stream). A change the
stat misses (two commits within one tick of the file clock, same size) waits for the
re-read every POLL_INTERVAL_S: it delays an event, never loses it. SQLite appends a commit's
frames to the WAL before it publishes the commit, so a stat can see the change a moment
before a read can see the rows: after each wake-up the next wait also returns after one tick,
for a second read.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID

import anyio

TICK_S = 0.025
POLL_INTERVAL_S = 1.0

Signature = tuple[tuple[int, int, int] | None, ...]


class _FileWatch:
    def __init__(self, paths: list[Path], tick_s: float) -> None:
        self._paths, self._tick_s = paths, tick_s
        self._seen = self._signature()
        self._read_again = False  # the last change may have been seen before its commit

    def _signature(self) -> Signature:
        marks: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                status = os.stat(path)
            except OSError:  # no WAL yet, or just removed by a checkpoint on close
                marks.append(None)
            else:
                marks.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(marks)

    async def wait(self, timeout: float) -> bool:
        deadline = anyio.current_time() + timeout
        if self._read_again:
            self._read_again = False
            await anyio.sleep(min(self._tick_s, timeout))
            return True
        while True:
            now = self._signature()
            if now != self._seen:  # also a change since the previous wait: not lost
                self._seen, self._read_again = now, True
                return True
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return False
            await anyio.sleep(min(self._tick_s, remaining))


class SqliteFileWakeups:
    """Wakes a job's readers when the SQLite database or its WAL changes (any job's commit)."""

    def __init__(
        self, database: Path, *, tick_s: float = TICK_S, poll_interval_s: float = POLL_INTERVAL_S
    ) -> None:
        self._paths = [database, database.with_name(database.name + "-wal")]
        self._tick_s, self._poll_interval_s = tick_s, poll_interval_s

    @property
    def poll_interval_s(self) -> float:
        return self._poll_interval_s

    @asynccontextmanager
    async def subscribe(self, job_id: UUID) -> AsyncIterator[_FileWatch]:
        yield _FileWatch(self._paths, self._tick_s)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
