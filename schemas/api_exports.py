"""API models of exports (requests and responses of /api/v1/exports)."""

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

from schemas.domain.exports import ExportMode, ExportStatus


class ExportSourceIn(BaseModel):
    """A dataset (its typed copy), or one artifact of a completed job."""

    dataset_id: UUID | None = None
    job_id: UUID | None = None
    artifact: str | None = Field(default=None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def one_source(self) -> "ExportSourceIn":
        if self.dataset_id is not None and (self.job_id or self.artifact):
            raise ValueError("give either dataset_id, or job_id and artifact, not both")
        if self.dataset_id is None and (self.job_id is None or self.artifact is None):
            raise ValueError("give dataset_id, or job_id and artifact")
        return self


class ExportCreate(BaseModel):
    """Load a dataset or a job's artifact into a table of a configured PostgreSQL."""

    source: ExportSourceIn
    destination: str = Field(min_length=1, max_length=255, description="A named destination.")
    table: str = Field(
        min_length=1, max_length=127, description="`name` or `schema.name` (identifiers)."
    )
    mode: ExportMode = Field(
        description="create: a new table (fails if it exists); append: insert into it "
        "(created when missing); replace: swap in the loaded table."
    )


class ExportLinks(BaseModel):
    self: str
    events: str
    failed_rows: str
    cancel: str


class ExportOut(BaseModel):
    id: UUID
    dataset_id: UUID | None
    job_id: UUID | None
    artifact: str | None
    destination: str  # the name only: its URL and credentials are never returned
    table: str
    mode: ExportMode
    status: ExportStatus
    progress: float
    message: str | None
    attempts: int
    cancel_requested: bool
    rows_loaded: int | None
    rows_failed: int | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None = Field(
        description="Once completed: rows_loaded, rows_failed, duration_s."
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: ExportLinks


class ExportPage(BaseModel):
    items: list[ExportOut]
    next_cursor: str | None


class ExportEventOut(BaseModel):
    id: int
    type: str
    payload: dict[str, Any]
    created_at: datetime


class ExportEventPage(BaseModel):
    export_id: UUID
    items: list[ExportEventOut]
    next_cursor: int | None


class ExportFailedRowOut(BaseModel):
    row_number: int
    values: dict[str, Any]
    reason: str


class ExportFailedRowPage(BaseModel):
    export_id: UUID
    items: list[ExportFailedRowOut]
    next_cursor: int | None
