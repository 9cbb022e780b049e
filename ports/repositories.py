"""Repository and unit-of-work ports over the relational store."""

# Within a class that defines a `list` method the name means that method, hence
# `builtins.list` in the annotations of such classes.
from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import UUID

from pydantic import computed_field

from ports.exports import ExportRepository
from ports.webhooks import WebhookDeliveryRepository, WebhookRepository
from schemas.domain.records import (
    ApiKey,
    Artifact,
    Dataset,
    DatasetStatus,
    FailedRow,
    Job,
    JobEvent,
    JobStatus,
    Principal,
    Record,
)
from schemas.domain.schedules import Schedule, ScheduleRun


class DatabaseUnavailable(Exception):
    """The database could not be reached; the operation may be retried."""


class IdempotencyConflict(Exception):
    """Another job of the same owner already holds this idempotency key."""


# Owner scoping. A read that serves a request takes the caller's Principal as a required
# argument and sees only that owner's records: another owner's record is absent (None or
# empty), exactly like a missing one, so the API answers 404 for both. Child records (failed
# rows, job events, artifacts) are reached through their owned parent, the filter being in the
# query itself. Reads without an owner are for the worker and the recovery loop, and are named
# for it (`get_for_worker`) or for what they sweep (`list_stale`, `list_unclaimed_queued`).


class DatasetRepository(Protocol):
    def add(self, dataset: Dataset) -> None:
        """Insert a new dataset."""
        ...

    def get(self, dataset_id: UUID, principal: Principal) -> Dataset | None:
        """One of the principal's datasets; None when missing or another owner's."""
        ...

    def get_for_worker(self, dataset_id: UUID) -> Dataset | None:
        """One dataset whoever owns it: for workers and recovery, never for a request."""
        ...

    def list(
        self,
        principal: Principal,
        *,
        status: DatasetStatus | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Dataset]:
        """The principal's datasets, newest first; `before` is the last id of the previous page."""
        ...

    def update(self, dataset_id: UUID, **changes: Any) -> None:
        """Set fields of one dataset and its updated_at (ValueError for `status`: transition)."""
        ...

    def transition(
        self,
        dataset_id: UUID,
        from_statuses: Sequence[DatasetStatus],
        to_status: DatasetStatus,
        **changes: Any,
    ) -> bool:
        """Compare-and-set the status; False when the dataset was not in from_statuses.

        IllegalTransition (schemas/domain/lifecycle.py) for a move the state machine forbids.
        """
        ...

    def list_stale(
        self, statuses: Sequence[DatasetStatus], updated_before: Any, limit: int = 100
    ) -> builtins.list[Dataset]:
        """Datasets stuck in one of the statuses since before the given time."""
        ...

    def delete(self, dataset_id: UUID) -> None:
        """Remove a dataset and its failed rows."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """How many datasets are in each status (statuses with none are absent)."""
        ...

    def total_size_bytes(self, principal: Principal) -> int:
        """The sum of the principal's datasets' size_bytes (their storage quota's use)."""
        ...


class FailedRowRepository(Protocol):
    def add_many(self, rows: Iterable[FailedRow]) -> int:
        """Insert failed rows; returns how many were written."""
        ...

    def list(
        self, principal: Principal, dataset_id: UUID, *, after_line: int = 0, limit: int = 100
    ) -> builtins.list[FailedRow]:
        """Failed rows of one of the principal's datasets by line number, after `after_line`.

        Empty when the dataset is missing or another owner's.
        """
        ...

    def delete_for_dataset(self, dataset_id: UUID) -> None:
        """Remove every failed row of a dataset (a re-validation starts clean)."""
        ...


class JobRepository(Protocol):
    def add(self, job: Job) -> None:
        """Insert a new job (IdempotencyConflict when the owner already used its key)."""
        ...

    def get(self, job_id: UUID, principal: Principal) -> Job | None:
        """One of the principal's jobs; None when missing or another owner's."""
        ...

    def get_for_worker(self, job_id: UUID) -> Job | None:
        """One job whoever owns it: for workers and recovery, never for a request."""
        ...

    def get_by_idempotency_key(self, principal: Principal, key: str) -> Job | None:
        """The job the principal's owner created with this Idempotency-Key, if any."""
        ...

    def list(
        self,
        principal: Principal,
        *,
        status: JobStatus | None = None,
        dataset_id: UUID | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Job]:
        """The principal's jobs, newest first; `before` is the last id of the previous page."""
        ...

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        """How many queued or running jobs read this dataset."""
        ...

    def list_queued_for_dataset(self, dataset_id: UUID) -> builtins.list[Job]:
        """Queued jobs waiting on one dataset, oldest first."""
        ...

    def claim(self, job_id: UUID, worker_id: str, now: datetime) -> Job | None:
        """Compare-and-set queued -> running (attempts + 1, worker, heartbeat, started_at if unset).

        None when the job was not queued or has cancel_requested set (a duplicate delivery,
        a cancelled job): the caller acknowledges and does nothing.
        """
        ...

    def heartbeat(
        self,
        job_id: UUID,
        attempt: int,
        now: datetime,
        *,
        progress: float | None = None,
        message: str | None = None,
        current_step: int | None = None,
    ) -> bool | None:
        """Record liveness (and progress) for the running attempt.

        Returns cancel_requested, or None when the job is no longer running this attempt
        (it was reaped, cancelled or finished elsewhere): the caller must stop.
        """
        ...

    def transition(
        self,
        job_id: UUID,
        from_statuses: Sequence[JobStatus],
        to_status: JobStatus,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> bool:
        """Compare-and-set the status (and, when given, the attempt); False if it did not match.

        IllegalTransition (schemas/domain/lifecycle.py) for a move the state machine forbids.
        """
        ...

    def request_cancel(self, job_id: UUID) -> bool:
        """Set cancel_requested on a queued or running job; False when it is already finished."""
        ...

    def list_stale_running(
        self, heartbeat_before: datetime, limit: int = 100
    ) -> builtins.list[Job]:
        """Running jobs whose last heartbeat is older than the given time."""
        ...

    def list_unclaimed_queued(
        self, updated_before: datetime, limit: int = 100
    ) -> builtins.list[Job]:
        """Queued jobs not touched since the given time, whose dataset is ready."""
        ...

    def touch(self, job_id: UUID, *, message: str | None = None) -> bool:
        """Set a queued job's updated_at to now (and message); False when it is not queued."""
        ...

    def delete(self, job_id: UUID) -> None:
        """Remove a job with its events and artifact records."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (statuses with none are absent)."""
        ...


class JobEventRepository(Protocol):
    def add(self, event: JobEvent) -> JobEvent:
        """Append an event; returns it with its id."""
        ...

    def add_many(self, events: list[JobEvent]) -> None:
        """Append events in this order, in one statement."""
        ...

    def list_for_job(
        self, principal: Principal, job_id: UUID, *, after_id: int = 0, limit: int = 1000
    ) -> list[JobEvent]:
        """Events of one of the principal's jobs in order, after `after_id`.

        Empty when the job is missing or another owner's.
        """
        ...


class ArtifactRepository(Protocol):
    def add(self, artifact: Artifact) -> None:
        """Record an artifact a job produced."""
        ...

    def list_for_job(self, principal: Principal, job_id: UUID) -> list[Artifact]:
        """Artifacts of one of the principal's jobs, by name (empty for another owner's)."""
        ...

    def get(self, principal: Principal, job_id: UUID, name: str) -> Artifact | None:
        """One artifact of one of the principal's jobs by name (None for another owner's)."""
        ...


class ApiKeyRepository(Protocol):
    """API keys, stored as hashes. Keys are managed by admins across owners."""

    def add(self, key: ApiKey) -> None:
        """Record a new key."""
        ...

    def find_by_hash_for_authentication(self, secret_hash: str) -> ApiKey | None:
        """The key with this secret hash, revoked or not: unscoped, for authentication only."""
        ...

    def get(self, key_id: UUID) -> ApiKey | None:
        """One key by id."""
        ...

    def list_all(
        self, owner_id: str | None = None, *, after: UUID | None = None, limit: int | None = None
    ) -> list[ApiKey]:
        """Every key (of one owner when given), oldest first: for admins and the CLI; at most
        `limit`, those after the key `after` (the last of the previous page) when given."""
        ...

    def revoke(self, key_id: UUID, when: datetime) -> bool:
        """Mark a key revoked; False when it does not exist or was revoked already."""
        ...

    def mark_used(self, key_id: UUID, when: datetime) -> None:
        """Record when a key was last used."""
        ...


class ExpiredJob(Record):
    """A finished job past its owner's retention, with the bytes its artifacts take."""

    job: Job
    artifact_bytes: int


class UnusedDataset(Record):
    """A dataset no job used for a while: its last use (upload, validation or newest job) and
    the bytes of its original and typed copy."""

    dataset: Dataset
    last_used_at: datetime
    copy_bytes: int


class PendingDeletion(Record):
    """Objects under `prefix` in one bucket ("datasets" or "results") whose records are gone."""

    id: int
    bucket: str
    prefix: str


class OwnerUsage(Record):
    """What one owner stores: counts by status and bytes (originals, typed copies, artifacts).

    A typed copy counts once the recovery loop measured it, seconds after validation.
    """

    owner_id: str
    datasets: dict[str, int]
    jobs: dict[str, int]
    dataset_bytes: int
    copy_bytes: int
    artifacts: int
    artifact_bytes: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_bytes(self) -> int:
        return self.dataset_bytes + self.copy_bytes + self.artifact_bytes


class RetentionRepository(Protocol):
    """Reads and deletes of the retention sweep and usage figures, across owners.

    `owners` limits a listing to those owners, `exclude_owners` leaves those out (the owners
    with a policy of their own).
    """

    def list_expired_jobs(
        self,
        finished_before: datetime,
        *,
        owners: Sequence[str] | None = None,
        exclude_owners: Sequence[str] = (),
        limit: int = 100,
    ) -> list[ExpiredJob]:
        """Completed, failed or cancelled jobs that finished before the time, oldest first."""
        ...

    def list_unused_datasets(
        self,
        unused_before: datetime,
        *,
        owners: Sequence[str] | None = None,
        exclude_owners: Sequence[str] = (),
        limit: int = 100,
    ) -> list[UnusedDataset]:
        """Ready or failed datasets last used before the time, with no queued or running job."""
        ...

    def delete_unused_dataset(self, dataset_id: UUID, unused_before: datetime) -> bool:
        """Delete the dataset and its failed rows if it is still unused as list_unused_datasets
        says; False (nothing deleted) when it was used or changed meanwhile."""
        ...

    def list_unmeasured_copies(self, limit: int = 100) -> list[Dataset]:
        """Ready datasets whose typed copy has no recorded size yet."""
        ...

    def set_copy_bytes(self, dataset_id: UUID, size: int) -> None:
        """Record the size of a dataset's typed copy (not a use: updated_at stays)."""
        ...

    def add_pending_deletion(self, bucket: str, prefix: str) -> None:
        """Remember objects to delete, in the transaction that deletes their records."""
        ...

    def list_pending_deletions(self, limit: int = 100) -> list[PendingDeletion]:
        """Pending deletions, oldest first."""
        ...

    def remove_pending_deletion(self, deletion_id: int) -> None:
        """Forget a pending deletion whose objects are gone."""
        ...

    def usage(self, principal: Principal) -> OwnerUsage:
        """What the principal's owner stores."""
        ...

    def usage_of_all_owners(self) -> list[OwnerUsage]:
        """What every owner with a dataset or a job stores, by owner id: for admins."""
        ...


class ScheduleRepository(Protocol):
    """Schedules and their runs (one run per schedule and due time)."""

    def add(self, schedule: Schedule) -> None:
        """Insert a new schedule."""
        ...

    def get(self, schedule_id: UUID, principal: Principal) -> Schedule | None:
        """One of the principal's schedules; None when missing or another owner's."""
        ...

    def get_for_worker(self, schedule_id: UUID) -> Schedule | None:
        """Any owner's schedule (for the beat, which acts for every owner); None when missing."""
        ...

    def list(
        self, principal: Principal, *, before: UUID | None = None, limit: int = 50
    ) -> builtins.list[Schedule]:
        """The principal's schedules, newest first; `before`: the previous page's last id."""
        ...

    def update(self, schedule_id: UUID, **changes: Any) -> None:
        """Set fields of one schedule (and its updated_at)."""
        ...

    def delete(self, schedule_id: UUID) -> None:
        """Remove a schedule with its runs (its jobs and datasets stay)."""
        ...

    def list_due(self, now: datetime, limit: int = 100) -> builtins.list[UUID]:
        """Ids of enabled schedules whose next_run_at is at or before `now`, most overdue first."""
        ...

    def lock_due(self, schedule_id: UUID, now: datetime) -> Schedule | None:
        """The schedule, locked for this transaction, if it is still enabled and due; None when
        it is not, or another transaction holds it (that one is evaluating it)."""
        ...

    def advance(self, schedule_id: UUID, next_run_at: datetime | None) -> None:
        """Move next_run_at forward (never back: a slower evaluator cannot rewind it)."""
        ...

    def add_run(self, run: ScheduleRun) -> ScheduleRun | None:
        """Insert a run with its id; None when the schedule already has one at that due time."""
        ...

    def update_run(self, run_id: int, **changes: Any) -> None:
        """Set fields of one run (and its updated_at)."""
        ...

    def update_run_if(self, run_id: int, expected: dict[str, Any], **changes: Any) -> bool:
        """Compare-and-set: change the run only while its fields hold `expected`; False when
        another evaluator changed it first."""
        ...

    def list_runs(
        self, principal: Principal, schedule_id: UUID, *, before: int | None = None, limit: int = 50
    ) -> builtins.list[ScheduleRun]:
        """Runs of one of the principal's schedules, newest first, with their job's status;
        empty for another owner's. `before`: the previous page's last run id."""
        ...

    def list_unsettled_runs(self, limit: int = 100) -> builtins.list[ScheduleRun]:
        """Runs still importing, and runs with an export waiting for their job, oldest first."""
        ...

    def next_version(self, schedule_id: UUID) -> int:
        """The version number the schedule's next imported dataset gets (1 for the first)."""
        ...

    def set_version(self, dataset_id: UUID, schedule_id: UUID, version: int) -> None:
        """Mark a dataset as version `version` of the schedule's source."""
        ...

    def previous_version(self, schedule_id: UUID, version: int) -> Dataset | None:
        """The newest `ready` dataset of the schedule with a version below `version`."""
        ...


class UnitOfWork(Protocol):
    """One transaction over every repository; leaving the block without commit rolls back."""

    # Read-only properties rather than attributes, which a Protocol would hold invariant: an
    # implementation may then declare its own repository classes (SqlDatasetRepository, ...).
    @property
    def datasets(self) -> DatasetRepository: ...

    @property
    def failed_rows(self) -> FailedRowRepository: ...

    @property
    def jobs(self) -> JobRepository: ...

    @property
    def job_events(self) -> JobEventRepository: ...

    @property
    def artifacts(self) -> ArtifactRepository: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def exports(self) -> ExportRepository: ...

    @property
    def schedules(self) -> ScheduleRepository: ...

    @property
    def retention(self) -> RetentionRepository: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def webhook_deliveries(self) -> WebhookDeliveryRepository: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self, *, durable: bool = True) -> None:
        """Make the changes of this block visible and durable.

        `durable=False` lets the database acknowledge before the commit is on disk (it is
        visible at once): a crash of the database server within about a second may lose it
        whole, never partly. For writes whose loss is harmless, such as history lines that a
        later durable transition supersedes; it saves a disk flush per commit.
        """
        ...

    def rollback(self) -> None:
        """Discard the changes of this block."""
        ...

    def check(self) -> None:
        """Raise DatabaseUnavailable when the database cannot be reached."""
        ...
