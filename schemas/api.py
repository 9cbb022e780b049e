"""HTTP request and response bodies."""

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, field_validator

from schemas.domain.records import (
    ColumnInfo,
    DatasetFormat,
    DatasetStatus,
    JobStatus,
    JobStep,
    KeyScope,
)
from schemas.domain.webhooks import DeliveryStatus, WebhookEvent

MAX_NULL_VALUES = 100
MAX_NULL_VALUE_CHARS = 100
NULL_VALUES_HELP = (
    "CSV null tokens: fields that are null where a number, date or boolean is read (text "
    "columns keep them as text; empty fields are always null). A JSON list of strings or a "
    "comma-separated list (items trimmed); an empty value: only empty fields are null. "
    "Default: pandas' list (NA, N/A, n/a, NULL, null, None, nan, NaN, -nan, #N/A, ...). "
    f"At most {MAX_NULL_VALUES} tokens of at most {MAX_NULL_VALUE_CHARS} characters."
)


def parse_null_values(value: str | list[str]) -> list[str]:
    """The null tokens of a `null_values` field: a JSON list of strings, or a comma-separated
    list (each item trimmed, empty items left out); ValueError saying what is wrong."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"null_values is not a valid JSON list: {exc}") from None
            if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
                raise ValueError("null_values must be a JSON list of strings")
            tokens = parsed
        else:
            tokens = [item.strip() for item in text.split(",") if item.strip()]
    else:
        tokens = list(value)
    if len(tokens) > MAX_NULL_VALUES:
        raise ValueError(f"null_values holds {len(tokens)} tokens; at most {MAX_NULL_VALUES}")
    for token in tokens:
        if len(token) > MAX_NULL_VALUE_CHARS:
            raise ValueError(
                f"a null value is {len(token)} characters long; at most {MAX_NULL_VALUE_CHARS}"
            )
        if any(ch in token for ch in "\x00\r\n"):
            raise ValueError("a null value may not hold a NUL byte or a line break")
    return list(dict.fromkeys(tokens))


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorBody(BaseModel):
    error: ErrorDetail


class DatasetLinks(BaseModel):
    self: str
    content: str
    preview: str
    failed_rows: str


class DatasetOut(BaseModel):
    id: UUID
    name: str
    format: DatasetFormat
    status: DatasetStatus
    size_bytes: int
    sha256: str
    row_count: int | None
    columns: list[ColumnInfo] | None
    failed_row_count: int
    error: str | None
    null_values: list[str] | None = Field(
        default=None, description="The CSV null tokens given at upload; null: the default list."
    )
    source_url: str | None = Field(default=None, description="Imported from this URL.")
    schedule_id: UUID | None = Field(
        default=None, description="The schedule whose source this dataset is a version of."
    )
    version: int | None = Field(
        default=None, description="Its version number among that schedule's imports (1, 2, ...)."
    )
    created_at: datetime
    updated_at: datetime
    links: DatasetLinks


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


class FailedRowOut(BaseModel):
    line_number: int
    raw_text: str
    reason: str


class FailedRowPage(BaseModel):
    dataset_id: UUID
    total: int
    items: list[FailedRowOut]
    next_cursor: int | None


class PreviewOut(BaseModel):
    dataset_id: UUID
    columns: list[ColumnInfo]
    rows: list[dict[str, Any]]


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = {}


class StepIn(BaseModel):
    processor: str
    params: dict[str, Any] = {}


class JobCreate(BaseModel):
    dataset_id: UUID
    steps: list[StepIn] = Field(min_length=1, max_length=50)
    name: str | None = Field(default=None, max_length=255, pattern=r"^[^\x00]*$")


class JobLinks(BaseModel):
    self: str
    events: str
    stream: str
    result: str
    cancel: str


class JobOut(BaseModel):
    id: UUID
    name: str | None
    dataset_id: UUID | None
    status: JobStatus
    progress: float
    message: str | None
    current_step: int | None
    steps: list[JobStep]
    attempts: int
    cancel_requested: bool
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class JobEventOut(BaseModel):
    id: int
    type: str
    payload: dict[str, Any]
    created_at: datetime


class JobEventPage(BaseModel):
    job_id: UUID
    items: list[JobEventOut]
    next_cursor: int | None


class ArtifactOut(BaseModel):
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    url: str


class JobResultOut(BaseModel):
    job_id: UUID
    status: JobStatus
    steps: list[dict[str, Any]]
    artifacts: list[ArtifactOut]


class ProcessorOut(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any]
    artifacts: list[str]


class ApiKeyCreate(BaseModel):
    owner: str = Field(min_length=1, max_length=64, description="The owner the key acts for.")
    name: str | None = Field(default=None, max_length=255, description="A label.")
    scope: KeyScope = KeyScope.write


class ApiKeyOut(BaseModel):
    id: UUID
    owner_id: str
    name: str | None
    scope: KeyScope
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="The key itself: shown once, stored only as a hash.")


class DatasetImport(BaseModel):
    """A dataset to download from a URL (POST /api/v1/datasets/import)."""

    url: str = Field(
        min_length=1,
        max_length=8192,
        description="http or https URL of the file. Its host must resolve to a public address "
        "(or one in ASSAY_IMPORT_ALLOWED_NETWORKS); redirects are followed, at most 5.",
    )
    name: str | None = Field(
        default=None,
        description="Display name, at most 255 characters (default: the file "
        "name in the URL's path).",
    )
    format: str | None = Field(
        default=None,
        description="csv, json, ndjson or parquet, when the URL's path does not end in one.",
    )
    null_values: list[str] | str | None = Field(default=None, description=NULL_VALUES_HELP)

    @field_validator("null_values")
    @classmethod
    def _tokens(cls, value: list[str] | str | None) -> list[str] | None:
        return None if value is None else parse_null_values(value)


class DatasetImported(DatasetOut):
    """The dataset recorded for an import: `uploaded` until a worker downloads it, then
    `validating` (`size_bytes` counts the bytes received), then `ready` or `failed` with the
    reason in `error`."""

    source_url: str


# --- Webhooks ---------------------------------------------------------------------------------


class WebhookCreate(BaseModel):
    url: str = Field(
        max_length=2048,
        description="http(s) URL that receives a POST per outcome; it must reach a public "
        "address (or one in ASSAY_WEBHOOK_ALLOWED_NETWORKS).",
    )
    events: list[WebhookEvent] = Field(min_length=1, description="The outcomes to announce.")
    description: str | None = Field(default=None, max_length=255)


class WebhookOut(BaseModel):
    id: UUID
    url: str
    events: list[WebhookEvent]
    description: str | None
    created_at: datetime
    links: dict[str, str]


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signs every delivery (X-Assay-Signature-256: sha256=<hex HMAC-SHA256 of "
        "the raw body>); shown only in this response."
    )


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


class WebhookDeliveryOut(BaseModel):
    id: UUID
    event: WebhookEvent
    subject_id: UUID
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryOut]
    next_cursor: str | None


class ScheduleExportIn(BaseModel):
    """Load the run's result into a PostgreSQL table once its job completed."""

    artifact: str | None = Field(
        default=None, max_length=255, description="The job's artifact; none: the dataset itself."
    )
    destination: str = Field(min_length=1, max_length=64, description="A named destination.")
    # Checked by the use case as POST /exports checks it (its 422 names action.export.table).
    table: str = Field(
        min_length=1, max_length=127, description="`name` or `schema.name` (identifiers)."
    )
    mode: Literal["create", "append", "replace"] = "append"


class ScheduleActionIn(BaseModel):
    """The job each run submits: on a dataset, or on a new version imported from a URL."""

    dataset_id: UUID | None = None
    source_url: str | None = Field(default=None, min_length=1, max_length=8192)
    format: str | None = Field(
        default=None, description="Of the imported file, when the URL's path does not end in it."
    )
    steps: list[StepIn] = Field(min_length=1, max_length=50)
    export: ScheduleExportIn | None = None


class ScheduleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00]*$")
    cron: str | None = Field(
        default=None, max_length=255, description="Cron expression, e.g. '0 6 * * *'."
    )
    interval_seconds: int | None = Field(default=None, description="Or: every N seconds.")
    timezone: str = Field(default="UTC", max_length=64, description="IANA name for `cron`.")
    enabled: bool = True
    action: ScheduleActionIn


class SchedulePatch(BaseModel):
    """Fields to change; `enabled: false` pauses, `true` resumes."""

    name: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[^\x00]*$")
    cron: str | None = Field(default=None, max_length=255)
    interval_seconds: int | None = None
    timezone: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    action: ScheduleActionIn | None = None


class ScheduleOut(BaseModel):
    id: UUID
    name: str
    cron: str | None
    interval_seconds: int | None
    timezone: str
    enabled: bool
    action: dict[str, Any]
    next_run_at: datetime | None = Field(description="The next due time (UTC); null: paused.")
    created_at: datetime
    updated_at: datetime
    links: dict[str, str]


class SchedulePage(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None


class ScheduleRunOut(BaseModel):
    id: int
    due_at: datetime
    manual: bool
    outcome: str = Field(
        description="submitted, importing, skipped: unchanged, refused: quota or failed"
    )
    message: str | None
    job_id: UUID | None
    job_status: str | None
    dataset_id: UUID | None
    version: int | None
    export: dict[str, Any] | None = Field(description="The export target, and its export_id.")
    export_state: str | None = Field(
        description="waiting (for the job), submitting, submitted, failed or skipped: ..."
    )
    created_at: datetime


class ScheduleRunPage(BaseModel):
    schedule_id: UUID
    items: list[ScheduleRunOut]
    next_cursor: int | None
