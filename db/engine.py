"""Engine and session factory; created by the composition root, never at import time."""

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from db.reply_guard import GuardedConnection

# A PostgreSQL server that vanishes without closing its connections (a network partition, a NAT
# timeout, a proxy that drops one side) would leave a query waiting for its reply forever, and
# the process that sent it with it. TCP keepalives probe a connection that has been silent for
# KEEPALIVES_IDLE_S and give up after KEEPALIVES_COUNT unanswered probes; TCP_USER_TIMEOUT_MS
# bounds how long sent data may stay unacknowledged. Either way such a query fails within
# about 25 s (10 + 3 x 5), and a live server, however long its query runs, answers the probes.
CONNECT_TIMEOUT_S = 5
KEEPALIVES_IDLE_S = 10
KEEPALIVES_INTERVAL_S = 5
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = 25_000


def postgres_connect_args() -> dict[str, int]:
    """libpq connection parameters that bound connecting and detect a dead server."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_S,
        "keepalives_interval": KEEPALIVES_INTERVAL_S,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: SQLite in WAL mode with foreign keys, or a pooled server."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(
            dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry
        ) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # pool_size covers the API's busy threads: connections above it (the overflow) are closed
    # when returned, and opening a PostgreSQL connection costs milliseconds, so a pool smaller
    # than the concurrency opens and closes connections all the time under load.
    parsed = make_url(url)
    postgres = parsed.get_backend_name() == "postgresql"
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=20,
        max_overflow=10,
        connect_args=postgres_connect_args() if postgres else {},
    )
    if postgres and parsed.get_driver_name() == "psycopg":

        @event.listens_for(engine, "do_connect")
        def _guarded(dialect: Any, record: Any, cargs: Any, cparams: Any) -> DBAPIConnection:
            # Keepalives cannot see a path that answers TCP but passes nothing: see reply_guard.
            return GuardedConnection.connect(*cargs, **cparams)  # type: ignore[return-value]

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
