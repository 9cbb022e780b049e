"""Domain records passed between use cases, ports and adapters."""

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_OWNER = "default"


class DatasetFormat(enum.StrEnum):
    csv = "csv"
    json = "json"
    ndjson = "ndjson"
    parquet = "parquet"


class DatasetStatus(enum.StrEnum):
    uploaded = "uploaded"
    validating = "validating"
    ready = "ready"
    failed = "failed"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_JOB_STATUSES = (JobStatus.queued, JobStatus.running)


class Record(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ColumnInfo(Record):
    name: str
    type: str
    null_count: int


class Dataset(Record):
    id: UUID
    owner_id: str
    name: str
    format: DatasetFormat
    status: DatasetStatus
    size_bytes: int
    sha256: str
    storage_key: str
    parquet_key: str | None = None
    row_count: int | None = None
    columns: list[ColumnInfo] | None = None
    failed_row_count: int = 0
    error: str | None = None
    # Imported from this URL (POST /datasets/import); None for an upload. Until the import has
    # stored the file, sha256 is "" and size_bytes counts the bytes received so far.
    source_url: str | None = None
    # The CSV null tokens the upload gave (`null_values`); None: the default list.
    null_values: list[str] | None = None
    # A version of a schedule's source (source_url schedules): the schedule and its number.
    schedule_id: UUID | None = None
    version: int | None = None
    created_at: datetime
    updated_at: datetime


class FailedRow(Record):
    dataset_id: UUID
    line_number: int
    raw_text: str
    reason: str


class JobStep(Record):
    processor: str
    params: dict[str, Any] = Field(default_factory=dict)


class Job(Record):
    id: UUID
    owner_id: str
    dataset_id: UUID | None
    name: str | None = None
    status: JobStatus
    steps: list[JobStep]
    progress: float = 0.0
    message: str | None = None
    current_step: int | None = None
    attempts: int = 0
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobEvent(Record):
    id: int | None = None
    job_id: UUID
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class Artifact(Record):
    job_id: UUID
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    storage_key: str
    created_at: datetime


class KeyScope(enum.StrEnum):
    """What an API key may do: read its owner's resources, also change them, or manage keys."""

    read = "read"
    write = "write"
    admin = "admin"

    def allows(self, needed: "KeyScope") -> bool:
        order = (KeyScope.read, KeyScope.write, KeyScope.admin)
        return order.index(self) >= order.index(needed)


class ApiKey(Record):
    """An API key as stored: its secret only as a hash."""

    id: UUID
    owner_id: str
    name: str | None = None
    scope: KeyScope
    prefix: str  # the first characters of the secret, to tell keys apart in listings
    secret_hash: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class Principal(Record):
    """Who is calling: every owner-scoped read and write takes one."""

    owner_id: str
    scope: KeyScope
    key_id: UUID | None = None  # None when authentication is turned off
