"""Task queue port: publishes hints to workers; the database stays the source of truth."""

from typing import Protocol
from uuid import UUID


class QueueUnavailable(Exception):
    """The broker could not be reached; the message was not published."""


class TaskQueue(Protocol):
    """Publishes work for the background workers."""

    def enqueue_dataset_validation(self, dataset_id: UUID) -> None:
        """Ask a worker to validate an uploaded dataset."""
        ...

    def enqueue_dataset_import(self, dataset_id: UUID) -> None:
        """Ask a worker to download an imported dataset from its URL, then validate it."""
        ...

    def enqueue_job(self, job_id: UUID) -> None:
        """Ask a worker to run a queued job."""
        ...

    def enqueue_export(self, export_id: UUID) -> None:
        """Ask a worker to run a queued export."""
        ...

    def revoke_job(self, job_id: UUID) -> None:
        """Best-effort: tell workers to drop a not-yet-started job message."""
        ...

    def check(self) -> None:
        """Raise QueueUnavailable when the broker cannot be reached."""
        ...
