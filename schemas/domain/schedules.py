"""Schedule records: a recurring job template, and one run per due time."""

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from schemas.domain.records import Record


class RunOutcome(enum.StrEnum):
    """What a schedule run did (a submitted job's own status is on the job)."""

    importing = "importing"  # a source_url run: the new version is downloading
    submitted = "submitted"  # a job was created
    unchanged = "skipped: unchanged"  # the imported file equals the previous version
    refused_quota = "refused: quota"  # the owner's storage quota had no room
    failed = "failed"  # the dataset is gone or failed, or the steps no longer fit it


# A run's export_state while its job has not finished.
EXPORT_WAITING = "waiting"


class ScheduleAction(Record):
    """The job template a schedule runs: on a dataset, or on a new version imported from a URL."""

    dataset_id: UUID | None = None
    source_url: str | None = None
    format: str | None = None  # of the imported file (resolved when the schedule is saved)
    steps: list[dict[str, Any]] = Field(default_factory=list)
    export: dict[str, Any] | None = None


class Schedule(Record):
    id: UUID
    owner_id: str
    name: str
    cron: str | None = None
    interval_seconds: int | None = None
    timezone: str = "UTC"
    enabled: bool = True
    action: ScheduleAction
    next_run_at: datetime | None = None  # None while paused
    created_at: datetime
    updated_at: datetime


class ScheduleRun(Record):
    id: int | None = None
    schedule_id: UUID
    due_at: datetime
    manual: bool = False  # started by POST /schedules/{id}/run rather than by the clock
    outcome: RunOutcome
    message: str | None = None
    job_id: UUID | None = None
    dataset_id: UUID | None = None
    version: int | None = None  # of the imported dataset (source_url schedules)
    export: dict[str, Any] | None = None  # the action's export target, and its export's id
    export_state: str | None = None  # waiting (for the job), submitted, failed, skipped: ...
    job_status: str | None = None  # read along with the run; not stored on it
    created_at: datetime
    updated_at: datetime
