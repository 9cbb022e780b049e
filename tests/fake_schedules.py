"""In-memory fake of the schedule repository (tests/fakes.py wires it into FakeUnitOfWork)."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from schemas.domain.records import Dataset, DatasetStatus, Principal
from schemas.domain.schedules import EXPORT_WAITING, RunOutcome, Schedule, ScheduleRun

if TYPE_CHECKING:
    from tests.fakes import FakeUnitOfWork


class FakeSchedules:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow
        self.rows: dict[UUID, Schedule] = {}
        self.runs: dict[int, ScheduleRun] = {}
        self.versions: dict[UUID, tuple[UUID, int]] = {}  # dataset id -> (schedule, version)

    def add(self, schedule: Schedule) -> None:
        self.rows[schedule.id] = schedule

    def get(self, schedule_id: UUID, principal: Principal) -> Schedule | None:
        schedule = self.rows.get(schedule_id)
        return schedule if schedule and schedule.owner_id == principal.owner_id else None

    def get_for_worker(self, schedule_id: UUID) -> Schedule | None:
        return self.rows.get(schedule_id)

    def list(
        self, principal: Principal, *, before: UUID | None = None, limit: int = 50
    ) -> builtins.list[Schedule]:
        rows = sorted(self.rows.values(), key=lambda s: s.id, reverse=True)
        rows = [s for s in rows if s.owner_id == principal.owner_id]
        return [s for s in rows if before is None or s.id < before][:limit]

    def update(self, schedule_id: UUID, **changes: Any) -> None:
        if schedule_id in self.rows:
            changes["updated_at"] = datetime.now(UTC)
            self.rows[schedule_id] = self.rows[schedule_id].model_copy(update=changes)

    def delete(self, schedule_id: UUID) -> None:
        self.rows.pop(schedule_id, None)
        for run_id in [i for i, r in self.runs.items() if r.schedule_id == schedule_id]:
            del self.runs[run_id]

    def list_due(self, now: datetime, limit: int = 100) -> builtins.list[UUID]:
        due = [
            s for s in self.rows.values() if s.enabled and s.next_run_at and s.next_run_at <= now
        ]
        return [s.id for s in sorted(due, key=lambda s: s.next_run_at or now)][:limit]

    def lock_due(self, schedule_id: UUID, now: datetime) -> Schedule | None:
        s = self.rows.get(schedule_id)
        return s if s and s.enabled and s.next_run_at and s.next_run_at <= now else None

    def advance(self, schedule_id: UUID, next_run_at: datetime | None) -> None:
        current = self.rows[schedule_id]
        if next_run_at is None or current.next_run_at is None or current.next_run_at < next_run_at:
            self.rows[schedule_id] = current.model_copy(update={"next_run_at": next_run_at})

    def add_run(self, run: ScheduleRun) -> ScheduleRun | None:
        if any(
            r.schedule_id == run.schedule_id and r.due_at == run.due_at for r in self.runs.values()
        ):
            return None
        run = run.model_copy(update={"id": len(self.runs) + 1})
        self.runs[run.id or 0] = run
        return run

    def update_run(self, run_id: int, **changes: Any) -> None:
        self.runs[run_id] = ScheduleRun.model_validate(
            {**self.runs[run_id].model_dump(), **changes}
        )

    def update_run_if(self, run_id: int, expected: dict[str, Any], **changes: Any) -> bool:
        current = self.runs[run_id].model_dump(mode="json")
        if any(current[k] != (v.value if hasattr(v, "value") else v) for k, v in expected.items()):
            return False
        self.update_run(run_id, **changes)
        return True

    def _with_status(self, run: ScheduleRun) -> ScheduleRun:
        job = self._uow.jobs.rows.get(run.job_id) if run.job_id else None
        return run.model_copy(update={"job_status": job.status.value if job else None})

    def list_runs(
        self, principal: Principal, schedule_id: UUID, *, before: int | None = None, limit: int = 50
    ) -> builtins.list[ScheduleRun]:
        if self.get(schedule_id, principal) is None:
            return []
        runs = [r for r in self.runs.values() if r.schedule_id == schedule_id]
        runs = [r for r in runs if before is None or (r.id or 0) < before]
        runs.sort(key=lambda r: r.id or 0, reverse=True)
        return [self._with_status(r) for r in runs[:limit]]

    def list_unsettled_runs(self, limit: int = 100) -> builtins.list[ScheduleRun]:
        runs = [
            self._with_status(r)
            for r in sorted(self.runs.values(), key=lambda r: r.id or 0)
            if r.outcome == RunOutcome.importing or r.export_state == EXPORT_WAITING
        ]
        return runs[:limit]

    def next_version(self, schedule_id: UUID) -> int:
        live = self._uow.datasets.rows
        mine = [v for d, (s, v) in self.versions.items() if s == schedule_id and d in live]
        return max(mine, default=0) + 1

    def set_version(self, dataset_id: UUID, schedule_id: UUID, version: int) -> None:
        self.versions[dataset_id] = (schedule_id, version)

    def previous_version(self, schedule_id: UUID, version: int) -> Dataset | None:
        live = self._uow.datasets.rows
        older = [
            (v, live[d])
            for d, (s, v) in self.versions.items()
            if s == schedule_id and v < version and d in live
        ]
        ready = [(v, d) for v, d in older if d.status == DatasetStatus.ready]
        return max(ready, key=lambda item: item[0])[1] if ready else None
