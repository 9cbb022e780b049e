"""SQL repository of exports, their events and the rows their target rejected."""

# Within a class that defines a `list` method the name means that method.
from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, delete, func, insert, literal, select, update

from db.models import ExportEventRow, ExportFailedRowRow, ExportRow, utcnow
from repositories.datasets import record_values, row_values, table_of
from schemas.domain.exports import Export, ExportEvent, ExportFailedRow, ExportStatus
from schemas.domain.records import ACTIVE_JOB_STATUSES, Principal

EXPORTS = table_of(ExportRow)
EVENTS = table_of(ExportEventRow)
FAILED = table_of(ExportFailedRowRow)


def _values(statuses: Sequence[ExportStatus]) -> list[str]:
    return [ExportStatus(s).value for s in statuses]


class SqlExportRepository:
    """Exports in the `exports` table; every status change is a compare-and-set UPDATE, as
    for jobs, so the worker, the reaper and a cancel never overwrite each other."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, export: Export) -> None:
        """Insert a new export."""
        self._db.execute(insert(EXPORTS).values(record_values(EXPORTS, export)))

    def get(self, export_id: UUID, principal: Principal) -> Export | None:
        """One of the principal's exports; None when missing or another owner's."""
        query = select(EXPORTS).where(
            EXPORTS.c.id == export_id, EXPORTS.c.owner_id == principal.owner_id
        )
        return self._one(query)

    def get_for_worker(self, export_id: UUID) -> Export | None:
        """One export whoever owns it: for workers and recovery, never for a request."""
        return self._one(select(EXPORTS).where(EXPORTS.c.id == export_id))

    def list(
        self,
        principal: Principal,
        *,
        status: ExportStatus | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Export]:
        """The principal's exports, newest first (ids are UUIDv7)."""
        query = select(EXPORTS).where(EXPORTS.c.owner_id == principal.owner_id)
        if status is not None:
            query = query.where(EXPORTS.c.status == ExportStatus(status).value)
        if before is not None:
            query = query.where(EXPORTS.c.id < before)
        return self._all(query.order_by(EXPORTS.c.id.desc()).limit(limit))

    def claim(self, export_id: UUID, worker_id: str, now: datetime) -> Export | None:
        """Compare-and-set queued -> running; None for a duplicate delivery or a cancel."""
        statement = (
            update(EXPORTS)
            .where(
                EXPORTS.c.id == export_id,
                EXPORTS.c.status == ExportStatus.queued.value,
                EXPORTS.c.cancel_requested.is_(False),
            )
            .values(
                status=ExportStatus.running.value,
                attempts=EXPORTS.c.attempts + 1,
                worker_id=worker_id,
                heartbeat_at=now,
                started_at=func.coalesce(
                    EXPORTS.c.started_at, literal(now, EXPORTS.c.started_at.type)
                ),
                updated_at=now,
            )
            .returning(*EXPORTS.c)
        )
        row = self._db.execute(statement).mappings().one_or_none()
        return Export.model_validate(row) if row is not None else None

    def heartbeat(
        self, export_id: UUID, attempt: int, now: datetime, *, progress: float, message: str
    ) -> bool | None:
        """Liveness and progress of the running attempt; cancel_requested, or None when lost."""
        statement = (
            update(EXPORTS)
            .where(
                EXPORTS.c.id == export_id,
                EXPORTS.c.status == ExportStatus.running.value,
                EXPORTS.c.attempts == attempt,
            )
            .values(heartbeat_at=now, updated_at=now, progress=progress, message=message)
            .returning(EXPORTS.c.cancel_requested)
        )
        flag = self._db.execute(statement).scalar_one_or_none()
        return bool(flag) if flag is not None else None

    def transition(
        self,
        export_id: UUID,
        from_statuses: Sequence[ExportStatus],
        to_status: ExportStatus,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> bool:
        """Compare-and-set the status (and the attempt); False if it did not match."""
        values = row_values(EXPORTS, {"updated_at": utcnow(), **changes, "status": to_status})
        statement = update(EXPORTS).where(
            EXPORTS.c.id == export_id, EXPORTS.c.status.in_(_values(from_statuses))
        )
        if attempt is not None:
            statement = statement.where(EXPORTS.c.attempts == attempt)
        return self._db.execute(statement.values(values)).rowcount == 1

    def request_cancel(self, export_id: UUID) -> bool:
        """Set cancel_requested on a queued or running export; False once it finished."""
        statement = (
            update(EXPORTS)
            .where(
                EXPORTS.c.id == export_id,
                EXPORTS.c.status.in_(_values(ACTIVE_JOB_STATUSES)),
            )
            .values(cancel_requested=True, updated_at=utcnow())
        )
        return self._db.execute(statement).rowcount == 1

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        """How many queued or running exports read the dataset."""
        query = select(func.count()).where(
            EXPORTS.c.dataset_id == dataset_id,
            EXPORTS.c.status.in_(_values([ExportStatus.queued, ExportStatus.running])),
        )
        return int(self._db.execute(query).scalar_one())

    def list_stale_running(
        self, heartbeat_before: datetime, limit: int = 100
    ) -> builtins.list[Export]:
        """Running exports whose last heartbeat is older than the given time, oldest first."""
        last_seen = func.coalesce(EXPORTS.c.heartbeat_at, EXPORTS.c.updated_at)
        query = (
            select(EXPORTS)
            .where(EXPORTS.c.status == ExportStatus.running.value, last_seen < heartbeat_before)
            .order_by(last_seen, EXPORTS.c.id)
            .limit(limit)
        )
        return self._all(query)

    def list_unclaimed_queued(
        self, updated_before: datetime, limit: int = 100
    ) -> builtins.list[Export]:
        """Queued exports not touched since the given time, oldest first."""
        query = (
            select(EXPORTS)
            .where(
                EXPORTS.c.status == ExportStatus.queued.value,
                EXPORTS.c.updated_at < updated_before,
            )
            .order_by(EXPORTS.c.updated_at, EXPORTS.c.id)
            .limit(limit)
        )
        return self._all(query)

    def touch(self, export_id: UUID) -> bool:
        """Set a queued export's updated_at to now; False when it is not queued."""
        statement = (
            update(EXPORTS)
            .where(EXPORTS.c.id == export_id, EXPORTS.c.status == ExportStatus.queued.value)
            .values(updated_at=utcnow())
        )
        return self._db.execute(statement).rowcount == 1

    def add_event(self, event: ExportEvent) -> None:
        """Append an event to an export's history."""
        self._db.execute(insert(EVENTS).values(record_values(EVENTS, event)))

    def list_events(
        self, principal: Principal, export_id: UUID, *, after_id: int = 0, limit: int = 500
    ) -> builtins.list[ExportEvent]:
        """Events of one of the principal's exports in order (the owner filter in the query)."""
        query = (
            select(EVENTS)
            .join(EXPORTS, EXPORTS.c.id == EVENTS.c.export_id)
            .where(
                EVENTS.c.export_id == export_id,
                EXPORTS.c.owner_id == principal.owner_id,
                EVENTS.c.id > after_id,
            )
            .order_by(EVENTS.c.id)
            .limit(limit)
        )
        return [ExportEvent.model_validate(r) for r in self._db.execute(query).mappings()]

    def add_failed_rows(self, rows: Iterable[ExportFailedRow]) -> None:
        """Record rows the target rejected, in one multi-row INSERT."""
        values = [record_values(FAILED, row) for row in rows]
        if values:
            self._db.execute(insert(FAILED), values)

    def delete_failed_rows(self, export_id: UUID, *, keep_attempt: int | None = None) -> None:
        """Forget the rejected rows of the attempts other than `keep_attempt` (all when None)."""
        statement = delete(FAILED).where(FAILED.c.export_id == export_id)
        if keep_attempt is not None:
            statement = statement.where(FAILED.c.attempt != keep_attempt)
        self._db.execute(statement)

    def list_failed_rows(
        self, principal: Principal, export_id: UUID, *, after_row: int = 0, limit: int = 100
    ) -> builtins.list[ExportFailedRow]:
        """Rejected rows of one of the principal's exports by row number, after `after_row`."""
        query = (
            select(FAILED)
            .join(EXPORTS, EXPORTS.c.id == FAILED.c.export_id)
            .where(
                FAILED.c.export_id == export_id,
                EXPORTS.c.owner_id == principal.owner_id,
                FAILED.c.row_number > after_row,
            )
            .order_by(FAILED.c.row_number)
            .limit(limit)
        )
        return [ExportFailedRow.model_validate(r) for r in self._db.execute(query).mappings()]

    def _one(self, query: Any) -> Export | None:
        row = self._db.execute(query).mappings().one_or_none()
        return Export.model_validate(row) if row is not None else None

    def _all(self, query: Any) -> builtins.list[Export]:
        return [Export.model_validate(row) for row in self._db.execute(query).mappings()]
