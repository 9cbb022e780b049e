"""A deadline for replies that will never come on a half-open PostgreSQL connection.

TCP keepalives end a connection whose peer vanished, but not one whose path still answers at
the TCP level while nothing gets through (a proxy or NAT that dropped one side): the waiting
query would block its process forever. Every wait for the server on a guarded connection is
registered here; a watcher thread looks at those older than SUSPECT_AFTER_S and asks the
server, on a fresh connection, whether their backend is still working. When that question
cannot be answered within PROBE_TIMEOUT_S, or the backend is not busy (its reply was lost), the
stuck socket is shut down: the waiting call fails at once with a connection error, which the
callers already treat as transient. A long statement that the server is still running is left
alone.
"""

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

SUSPECT_AFTER_S = 10.0  # no OLTP statement of ours takes this long without the server busy
PROBE_TIMEOUT_S = 5.0
WATCH_PERIOD_S = 1.0


@dataclass
class _Wait:
    connection: "GuardedConnection"
    fd: int
    backend_pid: int
    started: float
    probed: float = 0.0


class ReplyGuard:
    """The process's registry of waits for the server, and the thread that watches them."""

    def __init__(self) -> None:
        self._waits: dict[int, _Wait] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._pid = 0  # the process the watcher runs in: a forked child starts its own

    @contextlib.contextmanager
    def waiting(self, connection: "GuardedConnection") -> Iterator[None]:
        key = next(self._ids)
        pgconn = connection.pgconn
        wait = _Wait(connection, pgconn.socket, pgconn.backend_pid, time.monotonic())
        with self._lock:
            self._waits[key] = wait
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._watch, name="db-reply-guard", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:
                self._waits.pop(key, None)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_PERIOD_S)
            now = time.monotonic()
            with self._lock:
                suspects = [
                    w
                    for w in self._waits.values()
                    if now - w.started > SUSPECT_AFTER_S and now - w.probed > SUSPECT_AFTER_S
                ]
            for wait in suspects:
                wait.probed = now
                if not _server_busy_with(wait):
                    _cut(wait)


def _server_busy_with(wait: _Wait) -> bool:
    """Whether the server is still working on the backend's statement (a lock wait counts)."""
    info = wait.connection.info
    try:
        with psycopg.connect(
            info.dsn,
            password=info.password,
            connect_timeout=max(1, int(PROBE_TIMEOUT_S)),
            options=f"-c statement_timeout={int(PROBE_TIMEOUT_S * 1000)}",
            autocommit=True,
        ) as probe:
            row = probe.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", (wait.backend_pid,)
            ).fetchone()
    except Exception as exc:
        log.warning("database unreachable while a reply is overdue (%s)", type(exc).__name__)
        return False
    return row is not None and row[0] == "active"


def _cut(wait: _Wait) -> None:
    """Shut the stuck socket down: the blocked call sees the connection end."""
    log.warning(
        "no reply from database backend %d for %.0f s and it is not busy: closing the connection",
        wait.backend_pid,
        time.monotonic() - wait.started,
    )
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(wait.fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


GUARD = ReplyGuard()


class GuardedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server the process's ReplyGuard watches."""

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pgconn.transaction_status == TransactionStatus.UNKNOWN:  # not connected (yet)
            return super().wait(gen, *args, **kwargs)
        with GUARD.waiting(self):
            return super().wait(gen, *args, **kwargs)
