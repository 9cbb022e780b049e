"""Exports: a dataset or a job's artifact loaded into a table of a configured PostgreSQL."""

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from schemas.domain.records import JobStatus, Record

# An export goes through the same states as a job (queued -> running -> completed | failed |
# cancelled, cancel_requested while a running one stops).
ExportStatus = JobStatus


class ExportMode(enum.Enum):  # not StrEnum: a member is named `replace`
    create = "create"  # a new table; fails when it exists
    append = "append"  # insert into the existing table (created when missing)
    replace = "replace"  # swap in a new table of the same name


class Export(Record):
    id: UUID
    owner_id: str
    dataset_id: UUID | None = None
    job_id: UUID | None = None
    artifact: str | None = None
    destination: str
    table_name: str
    mode: ExportMode
    status: ExportStatus
    progress: float = 0.0
    message: str | None = None
    attempts: int = 0
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    rows_loaded: int | None = None
    rows_failed: int | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ExportEvent(Record):
    id: int | None = None
    export_id: UUID
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class ExportFailedRow(Record):
    """A source row the target table rejected, with the database's reason."""

    export_id: UUID
    attempt: int
    row_number: int  # 1-based, in the source's order
    values: dict[str, Any]
    reason: str
