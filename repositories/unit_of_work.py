"""The SQLAlchemy unit of work: one session, one transaction, every repository."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from ports.repositories import DatabaseUnavailable
from repositories.datasets import SqlDatasetRepository, SqlFailedRowRepository
from repositories.jobs import SqlArtifactRepository, SqlJobEventRepository, SqlJobRepository


class SqlUnitOfWork:
    """One transaction per `with` block; leaving the block without commit rolls back.

    Reusable for several consecutive blocks, but not nested and not shared between threads.
    """

    datasets: SqlDatasetRepository
    failed_rows: SqlFailedRowRepository
    jobs: SqlJobRepository
    job_events: SqlJobEventRepository
    artifacts: SqlArtifactRepository

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory
        self._session: Session | None = None

    def __enter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("this unit of work is already in a `with` block")
        session = self._session_factory()
        self._session = session
        self.datasets = SqlDatasetRepository(session)
        self.failed_rows = SqlFailedRowRepository(session)
        self.jobs = SqlJobRepository(session)
        self.job_events = SqlJobEventRepository(session)
        self.artifacts = SqlArtifactRepository(session)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.rollback()
        finally:
            session.close()

    def commit(self) -> None:
        """Make the changes of this block durable."""
        self._active_session().commit()

    def rollback(self) -> None:
        """Discard the changes of this block."""
        self._active_session().rollback()

    def check(self) -> None:
        """Raise DatabaseUnavailable when `SELECT 1` fails on a connection of its own."""
        try:
            with self._engine().connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as error:  # OperationalError and InterfaceError included
            raise DatabaseUnavailable(str(error.orig or error)) from error

    def _active_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("use the unit of work inside a `with` block")
        return self._session

    def _engine(self) -> Engine:
        bind = self._session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise RuntimeError("the session factory is not bound to an engine")
        return bind
