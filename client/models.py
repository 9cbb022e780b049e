"""The API's resources as the client reads them.

The client's own models, not the server's: extra fields a newer server sends are kept (as
attributes) rather than refused, so the client keeps working across server versions.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

DATASET_DONE = frozenset({"ready", "failed"})
JOB_DONE = frozenset({"completed", "failed", "cancelled"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Column(Model):
    name: str
    type: str
    null_count: int = 0


class Dataset(Model):
    id: UUID
    name: str
    format: str
    status: str  # uploaded, validating, ready, failed
    size_bytes: int
    sha256: str = ""
    row_count: int | None = None
    columns: list[Column] | None = None
    failed_row_count: int = 0
    error: str | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def done(self) -> bool:
        return self.status in DATASET_DONE


class FailedRow(Model):
    line_number: int
    raw_text: str
    reason: str


class FailedRowPage(Model):
    dataset_id: UUID
    total: int
    items: list[FailedRow]
    next_cursor: int | None = None


class Preview(Model):
    dataset_id: UUID
    columns: list[Column]
    rows: list[dict[str, Any]]


class Processor(Model):
    name: str
    description: str = ""
    params_schema: dict[str, Any] = {}
    artifacts: list[str] = []


class Step(Model):
    processor: str
    params: dict[str, Any] = {}


class Job(Model):
    id: UUID
    name: str | None = None
    dataset_id: UUID | None = None
    status: str  # queued, running, completed, failed, cancelled
    progress: float = 0.0
    message: str | None = None
    current_step: int | None = None
    steps: list[Step] = []
    attempts: int = 0
    cancel_requested: bool = False
    error: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in JOB_DONE


class JobEvent(Model):
    """One event of a job: from its history (GET /events) or its live stream (SSE)."""

    id: int
    type: str
    payload: dict[str, Any] = {}
    created_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.type in JOB_DONE

    @property
    def progress(self) -> float | None:
        value = self.payload.get("progress")
        return float(value) if isinstance(value, int | float) else None

    @property
    def eta_seconds(self) -> float | None:
        value = self.payload.get("eta_seconds")
        return float(value) if isinstance(value, int | float) else None

    @property
    def step(self) -> int | None:
        value = self.payload.get("step")
        return value if isinstance(value, int) else None

    @property
    def message(self) -> str | None:
        value = self.payload.get("message")
        return value if isinstance(value, str) else None


class Artifact(Model):
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    url: str


class JobResult(Model):
    job_id: UUID
    status: str
    steps: list[dict[str, Any]]
    artifacts: list[Artifact]
