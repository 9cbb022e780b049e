"""The SQLAlchemy unit of work: one connection, one transaction, every repository."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from ports.repositories import DatabaseUnavailable
from repositories.api_keys import SqlApiKeyRepository
from repositories.datasets import SqlDatasetRepository, SqlFailedRowRepository
from repositories.exports import SqlExportRepository
from repositories.jobs import SqlArtifactRepository, SqlJobEventRepository, SqlJobRepository
from repositories.retention import SqlRetentionRepository
from repositories.schedules import SqlScheduleRepository
from repositories.webhooks import SqlWebhookDeliveryRepository, SqlWebhookRepository


class SqlUnitOfWork:
    """One transaction per `with` block; leaving the block without commit rolls back.

    Reusable for several consecutive blocks, but not nested and not shared between threads.
    Runs on a plain SQLAlchemy Core connection from the engine's pool (the repositories issue
    Core statements only, so an ORM Session would add cost and nothing else).
    """

    datasets: SqlDatasetRepository
    failed_rows: SqlFailedRowRepository
    jobs: SqlJobRepository
    job_events: SqlJobEventRepository
    artifacts: SqlArtifactRepository
    api_keys: SqlApiKeyRepository
    exports: SqlExportRepository
    retention: SqlRetentionRepository
    schedules: SqlScheduleRepository
    webhooks: SqlWebhookRepository
    webhook_deliveries: SqlWebhookDeliveryRepository

    def __init__(self, bind: Engine | sessionmaker[Session]) -> None:
        """`bind`: the engine, or a session factory bound to one."""
        if isinstance(bind, Engine):
            self._engine = bind
        else:
            engine = bind.kw.get("bind")
            if not isinstance(engine, Engine):
                raise RuntimeError("the session factory is not bound to an engine")
            self._engine = engine
        self._connection: Connection | None = None

    def __enter__(self) -> Self:
        if self._connection is not None:
            raise RuntimeError("this unit of work is already in a `with` block")
        connection = self._engine.connect()
        self._connection = connection
        self.datasets = SqlDatasetRepository(connection)
        self.failed_rows = SqlFailedRowRepository(connection)
        self.jobs = SqlJobRepository(connection)
        self.job_events = SqlJobEventRepository(connection)
        self.artifacts = SqlArtifactRepository(connection)
        self.api_keys = SqlApiKeyRepository(connection)
        self.exports = SqlExportRepository(connection)
        self.retention = SqlRetentionRepository(connection)
        self.schedules = SqlScheduleRepository(connection)
        self.webhooks = SqlWebhookRepository(connection)
        self.webhook_deliveries = SqlWebhookDeliveryRepository(connection)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # rolls back whatever was not committed

    def commit(self, *, durable: bool = True) -> None:
        """Make the changes of this block visible and (unless durable=False) durable.

        On PostgreSQL `durable=False` is `SET LOCAL synchronous_commit = off` for this
        transaction: the commit returns without waiting for the WAL flush (about 2 ms on a
        plain disk). SQLite in WAL mode with synchronous=NORMAL never waits per commit.
        """
        connection = self._active_connection()
        if not durable and connection.in_transaction() and self._is_postgres():
            connection.execute(text("SET LOCAL synchronous_commit = off"))
        connection.commit()

    def rollback(self) -> None:
        """Discard the changes of this block."""
        self._active_connection().rollback()

    def check(self) -> None:
        """Raise DatabaseUnavailable when `SELECT 1` fails on a connection of its own."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as error:  # OperationalError and InterfaceError included
            raise DatabaseUnavailable(str(error.orig or error)) from error

    def _active_connection(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("use the unit of work inside a `with` block")
        return self._connection

    def _is_postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"
