"""An in-memory ExportRepository for use-case and API tests over fakes (see tests/fakes.py)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from schemas.domain.exports import Export, ExportEvent, ExportFailedRow, ExportStatus
from schemas.domain.records import Principal

ACTIVE = (ExportStatus.queued, ExportStatus.running)


class FakeExports:
    def __init__(self) -> None:
        self.rows: dict[UUID, Export] = {}
        self.events: list[ExportEvent] = []
        self.failed: list[ExportFailedRow] = []

    def _set(self, export_id: UUID, **changes: Any) -> Export:
        updated = self.rows[export_id].model_copy(update=changes)
        self.rows[export_id] = updated
        return updated

    def add(self, export: Export) -> None:
        self.rows[export.id] = export

    def get(self, export_id: UUID, principal: Principal) -> Export | None:
        found = self.rows.get(export_id)
        return found if found is not None and found.owner_id == principal.owner_id else None

    def get_for_worker(self, export_id: UUID) -> Export | None:
        return self.rows.get(export_id)

    def list(
        self,
        principal: Principal,
        *,
        status: ExportStatus | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Export]:
        mine = [
            e
            for e in self.rows.values()
            if e.owner_id == principal.owner_id
            and (status is None or e.status == status)
            and (before is None or e.id < before)
        ]
        return sorted(mine, key=lambda e: e.id, reverse=True)[:limit]

    def claim(self, export_id: UUID, worker_id: str, now: datetime) -> Export | None:
        found = self.rows.get(export_id)
        if found is None or found.status != ExportStatus.queued or found.cancel_requested:
            return None
        return self._set(
            export_id,
            status=ExportStatus.running,
            attempts=found.attempts + 1,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=found.started_at or now,
            updated_at=now,
        )

    def heartbeat(
        self, export_id: UUID, attempt: int, now: datetime, *, progress: float, message: str
    ) -> bool | None:
        found = self.rows.get(export_id)
        if found is None or found.status != ExportStatus.running or found.attempts != attempt:
            return None
        self._set(export_id, heartbeat_at=now, updated_at=now, progress=progress, message=message)
        return found.cancel_requested

    def transition(
        self,
        export_id: UUID,
        from_statuses: Sequence[ExportStatus],
        to_status: ExportStatus,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> bool:
        found = self.rows.get(export_id)
        if found is None or found.status not in from_statuses:
            return False
        if attempt is not None and found.attempts != attempt:
            return False
        self._set(export_id, **{"updated_at": datetime.now(UTC), **changes, "status": to_status})
        return True

    def request_cancel(self, export_id: UUID) -> bool:
        found = self.rows.get(export_id)
        if found is None or found.status not in ACTIVE:
            return False
        self._set(export_id, cancel_requested=True, updated_at=datetime.now(UTC))
        return True

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        active = (ExportStatus.queued, ExportStatus.running)
        return sum(e.dataset_id == dataset_id and e.status in active for e in self.rows.values())

    def list_stale_running(
        self, heartbeat_before: datetime, limit: int = 100
    ) -> builtins.list[Export]:
        return [
            e
            for e in self.rows.values()
            if e.status == ExportStatus.running
            and (e.heartbeat_at or e.updated_at) < heartbeat_before
        ][:limit]

    def list_unclaimed_queued(
        self, updated_before: datetime, limit: int = 100
    ) -> builtins.list[Export]:
        return [
            e
            for e in self.rows.values()
            if e.status == ExportStatus.queued and e.updated_at < updated_before
        ][:limit]

    def touch(self, export_id: UUID) -> bool:
        found = self.rows.get(export_id)
        if found is None or found.status != ExportStatus.queued:
            return False
        self._set(export_id, updated_at=datetime.now(UTC))
        return True

    def add_event(self, event: ExportEvent) -> None:
        self.events.append(event.model_copy(update={"id": len(self.events) + 1}))

    def list_events(
        self, principal: Principal, export_id: UUID, *, after_id: int = 0, limit: int = 500
    ) -> builtins.list[ExportEvent]:
        if self.get(export_id, principal) is None:
            return []
        return [e for e in self.events if e.export_id == export_id and (e.id or 0) > after_id][
            :limit
        ]

    def add_failed_rows(self, rows: Iterable[ExportFailedRow]) -> None:
        self.failed.extend(rows)

    def delete_failed_rows(self, export_id: UUID, *, keep_attempt: int | None = None) -> None:
        self.failed = [
            r for r in self.failed if r.export_id != export_id or r.attempt == keep_attempt
        ]

    def list_failed_rows(
        self, principal: Principal, export_id: UUID, *, after_row: int = 0, limit: int = 100
    ) -> builtins.list[ExportFailedRow]:
        if self.get(export_id, principal) is None:
            return []
        rows = [r for r in self.failed if r.export_id == export_id and r.row_number > after_row]
        return sorted(rows, key=lambda r: r.row_number)[:limit]
