"""Wake-ups over PostgreSQL LISTEN/NOTIFY: one listening connection per API process.

The job-event repository issues `pg_notify(channel, job_id)` in the transaction that inserts
the event, so PostgreSQL delivers the notification only after that transaction commits: a
woken reader always finds the event. This listener holds one connection in autocommit mode,
LISTENs on the channel and wakes the subscribers of the notified job.

Failure behaviour: when the connection cannot be opened or is lost (server restart, a killed
backend, a network cut noticed by a health check), the listener logs a warning and reconnects
with exponential backoff (0.1 s doubling to 5 s). Notifications sent while it was not listening
are lost, so after every (re)connect it wakes every subscriber once; in the meantime readers
fall back to their slow poll (`poll_interval_s`). The connection is probed with `SELECT 1`
every `health_check_s`, and TCP keepalives and a TCP user timeout are on (db.engine's), so a
silently dead one is noticed.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from db.engine import postgres_connect_args

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


class _Subscription:
    """One waiting reader: a flag set by wake-ups, cleared by each wait that returns."""

    def __init__(self) -> None:
        self._flag = asyncio.Event()

    def wake(self) -> None:
        self._flag.set()

    async def wait(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._flag.wait()
        except TimeoutError:
            return False
        self._flag.clear()
        return True


class PostgresJobWakeups:
    """LISTEN on `channel`; each notification's payload is the id of a job with a new event.

    Started by start() or the first subscribe(), in the running event loop (never at import or
    construction). Every subscriber lives in that loop, so no locking is needed.
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        *,
        poll_interval_s: float = 1.0,
        health_check_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._poll_interval_s = poll_interval_s
        self._health_check_s = health_check_s
        self._connect_timeout_s = connect_timeout_s
        self._subscribers: dict[UUID, set[_Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False
        self.connects = 0  # successful (re)connects, for tests and logs

    @property
    def poll_interval_s(self) -> float:
        return self._poll_interval_s

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._listening

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        # First start, or the previous loop is gone (a test client's): begin anew in this one.
        self._loop, self._subscribers, self._listening = loop, {}, False
        self._task = loop.create_task(self._run(), name="assay-job-wakeups")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done() or self._loop is not asyncio.get_running_loop():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @asynccontextmanager
    async def subscribe(self, job_id: UUID) -> AsyncIterator[_Subscription]:
        await self.start()
        subscription = _Subscription()
        self._subscribers.setdefault(job_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            waiting = self._subscribers.get(job_id)
            if waiting is not None:
                waiting.discard(subscription)
                if not waiting:
                    del self._subscribers[job_id]

    # --- the listening loop -----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF_S
        while True:
            connects_before = self.connects
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # psycopg.Error, OSError, a timed-out probe: reconnect
                if self.connects != connects_before:  # it was up until now: back off anew
                    backoff = INITIAL_BACKOFF_S
                log.warning(
                    "job event listener: %s: %s; reconnecting in %.1f s",
                    type(exc).__name__,
                    exc,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _listen(self) -> None:
        parameters: dict[str, str | int] = {
            **postgres_connect_args(),
            "connect_timeout": max(1, round(self._connect_timeout_s)),
            "application_name": "assay-job-wakeups",
        }
        connection = await psycopg.AsyncConnection.connect(
            make_conninfo(self._conninfo, **parameters), autocommit=True
        )
        try:
            await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self._listening = True
            self.connects += 1
            if self.connects > 1:
                log.info("job event listener reconnected")
            # Anything committed while nobody listened: let every reader look once.
            self._wake_all()
            while True:
                async for notify in connection.notifies(timeout=self._health_check_s):
                    self._wake(notify.payload)
                # Every health_check_s: make sure the connection is still alive.
                async with asyncio.timeout(self._connect_timeout_s):
                    await connection.execute("SELECT 1")
        finally:
            self._listening = False
            with contextlib.suppress(Exception):
                await connection.close()

    def _wake(self, payload: str) -> None:
        try:
            job_id = UUID(payload)
        except ValueError:
            return
        for subscription in self._subscribers.get(job_id, ()):
            subscription.wake()

    def _wake_all(self) -> None:
        for waiting in self._subscribers.values():
            for subscription in waiting:
                subscription.wake()
