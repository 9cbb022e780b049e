"""SQL repository for schedules and their runs."""

# Within a class that defines a `list` method the name means that method, hence
# `builtins.list` in the annotations of such classes.
from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Table, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from db.models import ScheduleRow, ScheduleRunRow, utcnow
from repositories.datasets import DATASETS, record_values, row_values, table_of
from repositories.jobs import JOBS
from schemas.domain.records import Dataset, DatasetStatus, Principal
from schemas.domain.schedules import EXPORT_WAITING, RunOutcome, Schedule, ScheduleRun

SCHEDULES = table_of(ScheduleRow)
RUNS = table_of(ScheduleRunRow)
# INSERT ... ON CONFLICT, per dialect (SQLAlchemy has no backend-neutral form).
_INSERTS: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}
# A run with its job's status (the job may be gone: its status is then None).
_RUNS_WITH_STATUS = select(RUNS, JOBS.c.status.label("job_status")).outerjoin(
    JOBS, JOBS.c.id == RUNS.c.job_id
)


class SqlScheduleRepository:
    """Schedules in `schedules`, their runs in `schedule_runs`."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, schedule: Schedule) -> None:
        """Insert a new schedule."""
        self._db.execute(insert(SCHEDULES).values(record_values(SCHEDULES, schedule)))

    def get(self, schedule_id: UUID, principal: Principal) -> Schedule | None:
        """One of the principal's schedules; None when missing or another owner's."""
        query = select(SCHEDULES).where(
            SCHEDULES.c.id == schedule_id, SCHEDULES.c.owner_id == principal.owner_id
        )
        row = self._db.execute(query).mappings().first()
        return Schedule.model_validate(row) if row is not None else None

    def get_for_worker(self, schedule_id: UUID) -> Schedule | None:
        """Any owner's schedule (for the beat, which acts for every owner)."""
        row = self._db.execute(select(SCHEDULES).where(SCHEDULES.c.id == schedule_id))
        found = row.mappings().first()
        return Schedule.model_validate(found) if found is not None else None

    def list(
        self, principal: Principal, *, before: UUID | None = None, limit: int = 50
    ) -> builtins.list[Schedule]:
        """The principal's schedules, newest first (ids are UUIDv7)."""
        query = select(SCHEDULES).where(SCHEDULES.c.owner_id == principal.owner_id)
        if before is not None:
            query = query.where(SCHEDULES.c.id < before)
        query = query.order_by(SCHEDULES.c.id.desc()).limit(limit)
        return [Schedule.model_validate(row) for row in self._db.execute(query).mappings()]

    def update(self, schedule_id: UUID, **changes: Any) -> None:
        """Set fields of one schedule (and its updated_at)."""
        values = row_values(SCHEDULES, {"updated_at": utcnow(), **changes})
        self._db.execute(update(SCHEDULES).where(SCHEDULES.c.id == schedule_id).values(values))

    def delete(self, schedule_id: UUID) -> None:
        """Remove a schedule with its runs (its jobs and datasets stay)."""
        self._db.execute(delete(RUNS).where(RUNS.c.schedule_id == schedule_id))
        self._db.execute(delete(SCHEDULES).where(SCHEDULES.c.id == schedule_id))

    def list_due(self, now: datetime, limit: int = 100) -> builtins.list[UUID]:
        """Ids of enabled schedules due at `now`, most overdue first."""
        query = (
            select(SCHEDULES.c.id)
            .where(SCHEDULES.c.enabled.is_(True), SCHEDULES.c.next_run_at <= now)
            .order_by(SCHEDULES.c.next_run_at)
            .limit(limit)
        )
        return list(self._db.execute(query).scalars())

    def lock_due(self, schedule_id: UUID, now: datetime) -> Schedule | None:
        """The schedule if still enabled and due, locked (PostgreSQL: FOR UPDATE SKIP LOCKED, so
        a second evaluator skips it; SQLite serialises writers anyway)."""
        query = select(SCHEDULES).where(
            SCHEDULES.c.id == schedule_id,
            SCHEDULES.c.enabled.is_(True),
            SCHEDULES.c.next_run_at <= now,
        )
        if self._db.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = self._db.execute(query).mappings().first()
        return Schedule.model_validate(row) if row is not None else None

    def advance(self, schedule_id: UUID, next_run_at: datetime | None) -> None:
        """Move next_run_at forward only (None clears it)."""
        statement = update(SCHEDULES).where(SCHEDULES.c.id == schedule_id)
        if next_run_at is not None:
            statement = statement.where(
                or_(SCHEDULES.c.next_run_at.is_(None), SCHEDULES.c.next_run_at < next_run_at)
            )
        self._db.execute(statement.values(next_run_at=next_run_at, updated_at=utcnow()))

    def add_run(self, run: ScheduleRun) -> ScheduleRun | None:
        """INSERT ... ON CONFLICT (schedule_id, due_at) DO NOTHING RETURNING id: no statement
        fails, so the transaction stays usable; None when the due time already has its run."""
        fields = {k: v for k, v in run if k != "job_status" and not (k == "id" and v is None)}
        values = row_values(RUNS, fields)
        statement = (
            _INSERTS[self._db.dialect.name](RUNS)
            .values(values)
            .on_conflict_do_nothing(index_elements=[RUNS.c.schedule_id, RUNS.c.due_at])
            .returning(RUNS.c.id)
        )
        row = self._db.execute(statement).first()
        return run.model_copy(update={"id": row[0]}) if row is not None else None

    def update_run(self, run_id: int, **changes: Any) -> None:
        """Set fields of one run (and its updated_at)."""
        values = row_values(RUNS, {"updated_at": utcnow(), **changes})
        self._db.execute(update(RUNS).where(RUNS.c.id == run_id).values(values))

    def update_run_if(self, run_id: int, expected: dict[str, Any], **changes: Any) -> bool:
        """Compare-and-set on the given columns (a concurrent UPDATE waits, then matches none)."""
        values = row_values(RUNS, {"updated_at": utcnow(), **changes})
        conditions = [RUNS.c[k] == v for k, v in row_values(RUNS, expected).items()]
        statement = update(RUNS).where(RUNS.c.id == run_id, *conditions).values(values)
        return self._db.execute(statement).rowcount == 1

    def list_runs(
        self, principal: Principal, schedule_id: UUID, *, before: int | None = None, limit: int = 50
    ) -> builtins.list[ScheduleRun]:
        """Runs of one of the principal's schedules, newest first (the owner is in the query)."""
        query = (
            _RUNS_WITH_STATUS.join(SCHEDULES, SCHEDULES.c.id == RUNS.c.schedule_id)
            .where(RUNS.c.schedule_id == schedule_id, SCHEDULES.c.owner_id == principal.owner_id)
            .order_by(RUNS.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(RUNS.c.id < before)
        return [ScheduleRun.model_validate(row) for row in self._db.execute(query).mappings()]

    def list_unsettled_runs(self, limit: int = 100) -> builtins.list[ScheduleRun]:
        """Runs still importing, and runs whose export waits for their job, oldest first."""
        query = (
            _RUNS_WITH_STATUS.where(
                or_(
                    RUNS.c.outcome == RunOutcome.importing.value,
                    RUNS.c.export_state == EXPORT_WAITING,
                )
            )
            .order_by(RUNS.c.id)
            .limit(limit)
        )
        return [ScheduleRun.model_validate(row) for row in self._db.execute(query).mappings()]

    def next_version(self, schedule_id: UUID) -> int:
        """One more than the schedule's highest dataset version (1 for the first)."""
        query = select(func.max(DATASETS.c.version)).where(DATASETS.c.schedule_id == schedule_id)
        return int(self._db.execute(query).scalar() or 0) + 1

    def set_version(self, dataset_id: UUID, schedule_id: UUID, version: int) -> None:
        """Mark a dataset as a version of the schedule's source (not a change: updated_at stays)."""
        statement = (
            update(DATASETS)
            .where(DATASETS.c.id == dataset_id)
            .values(schedule_id=schedule_id, version=version)
        )
        self._db.execute(statement)

    def previous_version(self, schedule_id: UUID, version: int) -> Dataset | None:
        """The newest ready dataset of the schedule below `version`."""
        query = (
            select(DATASETS)
            .where(
                DATASETS.c.schedule_id == schedule_id,
                DATASETS.c.version < version,
                DATASETS.c.status == DatasetStatus.ready.value,
            )
            .order_by(DATASETS.c.version.desc())
            .limit(1)
        )
        row = self._db.execute(query).mappings().first()
        return Dataset.model_validate(row) if row is not None else None
