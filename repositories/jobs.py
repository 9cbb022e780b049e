"""SQL repositories for jobs, their events and their artifacts."""

# Within a class that defines a `list` method the name means that method, hence
# `builtins.list` in the annotations of such classes.
from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Connection,
    String,
    Table,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from db.models import ArtifactRow, JobEventRow, JobRow, utcnow
from ports.repositories import IdempotencyConflict
from repositories.datasets import DATASETS, by_id, record_values, row_values, table_of
from schemas.domain.lifecycle import check_job_transition
from schemas.domain.records import (
    ACTIVE_JOB_STATUSES,
    Artifact,
    DatasetStatus,
    Job,
    JobEvent,
    JobStatus,
    Principal,
)

JOBS = table_of(JobRow)
JOB_EVENTS = table_of(JobEventRow)
ARTIFACTS = table_of(ArtifactRow)

# PostgreSQL NOTIFY channel announcing new job events; the payload is the job id.
JOB_EVENTS_CHANNEL = "assay_job_events"

# INSERT ... ON CONFLICT, per dialect (SQLAlchemy has no backend-neutral form).
_UPSERT_INSERTS: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}

# Built once, values bound at execution (see by_id): the request path's statements.
_JOB, _OWNED_JOB = by_id(JOBS)
# A job's events, only through the job of the given owner (the owner filter is in the query:
# another owner's job yields no row). Polled by every open job stream.
_OWNED_EVENTS = (
    select(JOB_EVENTS)
    .join(JOBS, JOBS.c.id == JOB_EVENTS.c.job_id)
    .where(
        JOB_EVENTS.c.job_id == bindparam("job_id"),
        JOBS.c.owner_id == bindparam("owner_id"),
        JOB_EVENTS.c.id > bindparam("after_id"),
    )
    .order_by(JOB_EVENTS.c.id)
    .limit(bindparam("limit"))
)
_OWNED_ARTIFACTS = (
    select(ARTIFACTS)
    .join(JOBS, JOBS.c.id == ARTIFACTS.c.job_id)
    .where(ARTIFACTS.c.job_id == bindparam("job_id"), JOBS.c.owner_id == bindparam("owner_id"))
    .order_by(ARTIFACTS.c.name)
)
_OWNED_ARTIFACT = _OWNED_ARTIFACTS.where(ARTIFACTS.c.name == bindparam("name"))
_INSERT_JOB = insert(JOBS)
# A job is a use of its dataset: the retention sweep keeps datasets used recently.
_MARK_DATASET_USED = (
    update(DATASETS)
    .where(DATASETS.c.id == bindparam("dataset_id"))
    # updated_at stays: the column's onupdate would restart the recovery loop's clocks.
    .values(last_used_at=bindparam("used_at"), updated_at=DATASETS.c.updated_at)
)
_INSERT_EVENT = insert(JOB_EVENTS)
# Each row notifies its own job (as text, the form str(UUID) gives).
_ID_AND_NOTIFY = (
    JOB_EVENTS.c.id,
    func.pg_notify(JOB_EVENTS_CHANNEL, cast(JOB_EVENTS.c.job_id, String)),
)
_INSERT_EVENT_NOTIFYING = _INSERT_EVENT.returning(*_ID_AND_NOTIFY)


def _statuses(statuses: Sequence[JobStatus]) -> list[str]:
    return [JobStatus(status).value for status in statuses]


class SqlJobRepository:
    """Jobs in the `jobs` table.

    Every state change is a single conditional UPDATE (compare-and-set), so concurrent
    workers, the reaper and the API never overwrite each other's transitions.
    """

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, job: Job) -> None:
        """Insert a new job; IdempotencyConflict when the owner already used its key.

        The key check is `INSERT ... ON CONFLICT (owner_id, idempotency_key) DO NOTHING`
        rather than catching IntegrityError: no statement fails, so the transaction stays
        usable on PostgreSQL without a SAVEPOINT (pysqlite turns a SAVEPOINT that opens the
        transaction into its own commit, which would break rollback on SQLite).

        It also stamps the dataset's last_used_at (retention), in the same transaction.
        """
        if job.dataset_id is not None:
            used = {"dataset_id": job.dataset_id, "used_at": job.created_at}
            self._db.execute(_MARK_DATASET_USED, used)
        values = record_values(JOBS, job)
        if job.idempotency_key is None:
            self._db.execute(_INSERT_JOB, values)
            return
        dialect = self._db.dialect.name
        statement = (
            _UPSERT_INSERTS[dialect](JOBS)
            .values(values)
            .on_conflict_do_nothing(index_elements=[JOBS.c.owner_id, JOBS.c.idempotency_key])
            # RETURNING rather than rowcount, which drivers do not all report for an INSERT.
            .returning(JOBS.c.id)
        )
        if self._db.execute(statement).first() is None:
            raise IdempotencyConflict(
                f"owner {job.owner_id!r} already has a job with key {job.idempotency_key!r}"
            )

    def get(self, job_id: UUID, principal: Principal) -> Job | None:
        """One of the principal's jobs; None when missing or another owner's."""
        return self._one(_OWNED_JOB, {"id": job_id, "owner_id": principal.owner_id})

    def get_for_worker(self, job_id: UUID) -> Job | None:
        """One job whoever owns it: for workers and recovery, never for a request."""
        return self._one(_JOB, {"id": job_id})

    def get_by_idempotency_key(self, principal: Principal, key: str) -> Job | None:
        """The job the principal's owner created with this Idempotency-Key, if any."""
        query = select(JOBS).where(
            JOBS.c.owner_id == principal.owner_id, JOBS.c.idempotency_key == key
        )
        return self._one(query)

    def list(
        self,
        principal: Principal,
        *,
        status: JobStatus | None = None,
        dataset_id: UUID | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Job]:
        """The principal's jobs, newest first (ids are UUIDv7); `before`: see the port."""
        query = select(JOBS).where(JOBS.c.owner_id == principal.owner_id)
        if status is not None:
            query = query.where(JOBS.c.status == JobStatus(status).value)
        if dataset_id is not None:
            query = query.where(JOBS.c.dataset_id == dataset_id)
        if before is not None:
            query = query.where(JOBS.c.id < before)
        return self._all(query.order_by(JOBS.c.id.desc()).limit(limit))

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (statuses with none are absent)."""
        query = select(JOBS.c.status, func.count()).group_by(JOBS.c.status)
        return {status: count for status, count in self._db.execute(query)}

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        """How many queued or running jobs read this dataset."""
        query = (
            select(func.count())
            .select_from(JOBS)
            .where(
                JOBS.c.dataset_id == dataset_id,
                JOBS.c.status.in_(_statuses(ACTIVE_JOB_STATUSES)),
            )
        )
        return self._db.execute(query).scalar_one()

    def list_queued_for_dataset(self, dataset_id: UUID) -> builtins.list[Job]:
        """Queued jobs waiting on one dataset, oldest first."""
        query = (
            select(JOBS)
            .where(JOBS.c.dataset_id == dataset_id, JOBS.c.status == JobStatus.queued.value)
            .order_by(JOBS.c.id)
        )
        return self._all(query)

    def claim(self, job_id: UUID, worker_id: str, now: datetime) -> Job | None:
        """Compare-and-set queued -> running; the claimed job, or None when it was not claimable.

        One UPDATE ... RETURNING (SQLite >= 3.35): a duplicate delivery or a job with
        cancel_requested matches no row.
        """
        statement = (
            update(JOBS)
            .where(
                JOBS.c.id == job_id,
                JOBS.c.status == JobStatus.queued.value,
                JOBS.c.cancel_requested.is_(False),
            )
            .values(
                status=JobStatus.running.value,
                attempts=JOBS.c.attempts + 1,
                worker_id=worker_id,
                heartbeat_at=now,
                # Typed like the column, so SQLite stores the same UTC text format.
                started_at=func.coalesce(JOBS.c.started_at, literal(now, JOBS.c.started_at.type)),
                updated_at=now,
            )
            .returning(*JOBS.c)
        )
        row = self._db.execute(statement).mappings().one_or_none()
        return Job.model_validate(row) if row is not None else None

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
        """Record liveness (and progress) for the running attempt; returns cancel_requested.

        None when the job is no longer running this attempt: the caller must stop.
        """
        changes: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if progress is not None:
            changes["progress"] = progress
        if message is not None:
            changes["message"] = message
        if current_step is not None:
            changes["current_step"] = current_step
        statement = (
            update(JOBS)
            .where(
                JOBS.c.id == job_id,
                JOBS.c.status == JobStatus.running.value,
                JOBS.c.attempts == attempt,
            )
            .values(row_values(JOBS, changes))
            .returning(JOBS.c.cancel_requested)
        )
        cancel_requested = self._db.execute(statement).scalar_one_or_none()
        return bool(cancel_requested) if cancel_requested is not None else None

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

        IllegalTransition, before any SQL, for a move schemas/domain/lifecycle.py does not allow.
        """
        check_job_transition(from_statuses, to_status)
        values = row_values(JOBS, {"updated_at": utcnow(), **changes, "status": to_status})
        statement = update(JOBS).where(
            JOBS.c.id == job_id, JOBS.c.status.in_(_statuses(from_statuses))
        )
        if attempt is not None:
            statement = statement.where(JOBS.c.attempts == attempt)
        result = self._db.execute(statement.values(values))
        return result.rowcount == 1

    def request_cancel(self, job_id: UUID) -> bool:
        """Set cancel_requested on a queued or running job; False when it is already finished."""
        statement = (
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.status.in_(_statuses(ACTIVE_JOB_STATUSES)))
            .values(cancel_requested=True, updated_at=utcnow())
        )
        return self._db.execute(statement).rowcount == 1

    def list_stale_running(
        self, heartbeat_before: datetime, limit: int = 100
    ) -> builtins.list[Job]:
        """Running jobs whose last heartbeat is older than the given time, oldest first.

        A running job without a heartbeat (never written by `claim`) counts from updated_at.
        """
        last_seen = func.coalesce(JOBS.c.heartbeat_at, JOBS.c.updated_at)
        query = (
            select(JOBS)
            .where(JOBS.c.status == JobStatus.running.value, last_seen < heartbeat_before)
            .order_by(last_seen, JOBS.c.id)
            .limit(limit)
        )
        return self._all(query)

    def list_unclaimed_queued(
        self, updated_before: datetime, limit: int = 100
    ) -> builtins.list[Job]:
        """Queued jobs not touched since the given time whose dataset is ready, oldest first."""
        ready = select(DATASETS.c.id).where(DATASETS.c.status == DatasetStatus.ready.value)
        query = (
            select(JOBS)
            .where(
                JOBS.c.status == JobStatus.queued.value,
                JOBS.c.updated_at < updated_before,
                JOBS.c.dataset_id.in_(ready),
            )
            .order_by(JOBS.c.updated_at, JOBS.c.id)
            .limit(limit)
        )
        return self._all(query)

    def touch(self, job_id: UUID, *, message: str | None = None) -> bool:
        """Set a queued job's updated_at to now (and its message); False when it is not queued.

        The reaper's next re-publish then waits another grace period. Not a status change.
        """
        changes: dict[str, Any] = {"updated_at": utcnow()}
        if message is not None:
            changes["message"] = message
        statement = (
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.status == JobStatus.queued.value)
            .values(changes)
        )
        return self._db.execute(statement).rowcount == 1

    def delete(self, job_id: UUID) -> None:
        """Remove a job with its events and artifact records (not the stored files)."""
        # Explicit rather than trusting ON DELETE CASCADE, which SQLite honours only with
        # PRAGMA foreign_keys=ON.
        self._db.execute(delete(ARTIFACTS).where(ARTIFACTS.c.job_id == job_id))
        self._db.execute(delete(JOB_EVENTS).where(JOB_EVENTS.c.job_id == job_id))
        self._db.execute(delete(JOBS).where(JOBS.c.id == job_id))

    def _one(self, query: Any, params: dict[str, Any] | None = None) -> Job | None:
        row = self._db.execute(query, params).mappings().one_or_none()
        return Job.model_validate(row) if row is not None else None

    def _all(self, query: Any) -> builtins.list[Job]:
        return [Job.model_validate(row) for row in self._db.execute(query).mappings()]


class SqlJobEventRepository:
    """The append-only `job_events` history.

    On PostgreSQL every insert also sends `pg_notify(JOB_EVENTS_CHANNEL, job_id)` in the same
    statement, hence the same transaction: listeners get it only once the event is committed
    (and never for a rolled-back one); several events of one job in one transaction are
    delivered as one notification. The notification is a wake-up, not the data.
    """

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, event: JobEvent) -> JobEvent:
        """Append an event; returns it with its generated id."""
        values = record_values(JOB_EVENTS, event)
        if self._db.dialect.name == "postgresql":
            event_id = self._db.execute(_INSERT_EVENT_NOTIFYING, values).one()[0]
        else:
            primary_key = self._db.execute(_INSERT_EVENT, values).inserted_primary_key
            assert primary_key is not None  # None only for a statement that inserted no row
            event_id = primary_key[0]
        return event.model_copy(update={"id": event_id})

    def add_many(self, events: list[JobEvent]) -> None:
        """Append events in this order, in one multi-row INSERT."""
        if not events:
            return
        statement = insert(JOB_EVENTS).values([record_values(JOB_EVENTS, e) for e in events])
        if self._db.dialect.name == "postgresql":
            self._db.execute(statement.returning(*_ID_AND_NOTIFY)).all()
        else:
            self._db.execute(statement)

    def list_for_job(
        self, principal: Principal, job_id: UUID, *, after_id: int = 0, limit: int = 1000
    ) -> list[JobEvent]:
        """Events of one of the principal's jobs in id order, after `after_id`."""
        params = {
            "job_id": job_id,
            "owner_id": principal.owner_id,
            "after_id": after_id,
            "limit": limit,
        }
        rows = self._db.execute(_OWNED_EVENTS, params).mappings()
        return [JobEvent.model_validate(row) for row in rows]


class SqlArtifactRepository:
    """Files jobs produced, in the `artifacts` table."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, artifact: Artifact) -> None:
        """Record an artifact a job produced."""
        self._db.execute(insert(ARTIFACTS).values(record_values(ARTIFACTS, artifact)))

    def list_for_job(self, principal: Principal, job_id: UUID) -> list[Artifact]:
        """Artifacts of one of the principal's jobs, by name (empty for another owner's)."""
        params = {"job_id": job_id, "owner_id": principal.owner_id}
        rows = self._db.execute(_OWNED_ARTIFACTS, params).mappings()
        return [Artifact.model_validate(row) for row in rows]

    def get(self, principal: Principal, job_id: UUID, name: str) -> Artifact | None:
        """One artifact of one of the principal's jobs by name (None for another owner's)."""
        params = {"job_id": job_id, "owner_id": principal.owner_id, "name": name}
        row = self._db.execute(_OWNED_ARTIFACT, params).mappings().one_or_none()
        return Artifact.model_validate(row) if row is not None else None
