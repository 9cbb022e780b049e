"""Webhooks: an owner's subscriptions to outcomes, and each delivery of one outcome to one."""

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from schemas.domain.records import Record


class WebhookEvent(enum.StrEnum):
    job_completed = "job.completed"
    job_failed = "job.failed"
    job_cancelled = "job.cancelled"
    export_completed = "export.completed"
    export_failed = "export.failed"
    schedule_run = "schedule.run"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # not sent yet, or to be retried at next_attempt_at
    delivered = "delivered"  # the receiver answered 2xx
    failed = "failed"  # every attempt failed: no more retries


class Webhook(Record):
    id: UUID
    owner_id: str
    url: str
    events: list[WebhookEvent]
    secret: str  # signs every delivery; shown to the client once, when created
    description: str | None = None
    created_at: datetime


class WebhookDelivery(Record):
    """One outcome to send to one webhook: written in the transaction of the outcome (the
    outbox), then sent by the relay until the receiver accepts it or the attempts run out."""

    id: UUID
    webhook_id: UUID
    owner_id: str
    event: WebhookEvent
    subject_id: UUID  # the job (export, schedule) the outcome is about
    payload: dict[str, Any]  # the body's `data`
    status: DeliveryStatus = DeliveryStatus.pending
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
