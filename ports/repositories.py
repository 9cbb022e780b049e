"""Repository and unit-of-work ports over the relational store."""

# Lazy annotations: the `list` methods would otherwise shadow the builtin in later signatures.
from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import UUID

from schemas.records import (
    Artifact,
    Dataset,
    DatasetStatus,
    FailedRow,
    Job,
    JobEvent,
)


class DatabaseUnavailable(Exception):
    """The database could not be reached; the operation may be retried."""


class DatasetRepository(Protocol):
    def add(self, dataset: Dataset) -> None:
        """Insert a new dataset."""
        ...

    def get(self, dataset_id: UUID, owner_id: str | None = None) -> Dataset | None:
        """One dataset, or None when it does not exist or belongs to another owner."""
        ...

    def list(
        self,
        owner_id: str,
        *,
        status: DatasetStatus | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> list[Dataset]:
        """Newest first; `before` is the id of the last dataset of the previous page."""
        ...

    def update(self, dataset_id: UUID, **changes: Any) -> None:
        """Set fields of one dataset."""
        ...

    def transition(
        self,
        dataset_id: UUID,
        from_statuses: Sequence[DatasetStatus],
        to_status: DatasetStatus,
        **changes: Any,
    ) -> bool:
        """Compare-and-set the status; False when the dataset was not in from_statuses."""
        ...

    def list_stale(
        self, statuses: Sequence[DatasetStatus], updated_before: Any, limit: int = 100
    ) -> list[Dataset]:
        """Datasets stuck in one of the statuses since before the given time."""
        ...

    def delete(self, dataset_id: UUID) -> None:
        """Remove a dataset and its failed rows."""
        ...


class FailedRowRepository(Protocol):
    def add_many(self, rows: Iterable[FailedRow]) -> int:
        """Insert failed rows; returns how many were written."""
        ...

    def list(self, dataset_id: UUID, *, after_line: int = 0, limit: int = 100) -> list[FailedRow]:
        """Failed rows ordered by line number, starting after `after_line`."""
        ...

    def delete_for_dataset(self, dataset_id: UUID) -> None:
        """Remove every failed row of a dataset (a re-validation starts clean)."""
        ...


class JobRepository(Protocol):
    def add(self, job: Job) -> None:
        """Insert a new job."""
        ...

    def get(self, job_id: UUID, owner_id: str | None = None) -> Job | None:
        """One job, or None when it does not exist or belongs to another owner."""
        ...

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        """How many queued or running jobs read this dataset."""
        ...


class JobEventRepository(Protocol):
    def add(self, event: JobEvent) -> JobEvent:
        """Append an event; returns it with its id."""
        ...

    def list_for_job(self, job_id: UUID, *, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events of one job in order, starting after `after_id`."""
        ...


class ArtifactRepository(Protocol):
    def add(self, artifact: Artifact) -> None:
        """Record an artifact a job produced."""
        ...

    def list_for_job(self, job_id: UUID) -> list[Artifact]:
        """Artifacts of one job, by name."""
        ...


class UnitOfWork(Protocol):
    """One transaction over every repository; leaving the block without commit rolls back."""

    datasets: DatasetRepository
    failed_rows: FailedRowRepository
    jobs: JobRepository
    job_events: JobEventRepository
    artifacts: ArtifactRepository

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None:
        """Make the changes of this block durable."""
        ...

    def rollback(self) -> None:
        """Discard the changes of this block."""
        ...

    def check(self) -> None:
        """Raise DatabaseUnavailable when the database cannot be reached."""
        ...
