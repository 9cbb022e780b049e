"""Webhooks: an owner subscribes a URL to outcomes (job, export, schedule); each outcome writes
its deliveries in its own transaction (the outbox), and a relay in the workers sends them,
signed, retrying with backoff until the receiver answers 2xx or the attempts run out.

Delivery is at least once: a relay that dies after the receiver accepted a delivery but before
recording it sends it again later. Receivers tell repeats apart by `X-Assay-Delivery`.
"""

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from ports.fetcher import UrlRefused
from ports.repositories import UnitOfWork
from ports.webhooks import WebhookSender, WebhookSendFailed
from schemas.domain.exports import ExportStatus
from schemas.domain.ids import new_id
from schemas.domain.records import Job, JobStatus, Principal
from schemas.domain.webhooks import DeliveryStatus, Webhook, WebhookDelivery, WebhookEvent
from use_cases.errors import InvalidParams, NotFound

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Assay-Signature-256"
TIMESTAMP_HEADER = "X-Assay-Timestamp"
EVENT_HEADER = "X-Assay-Event"
DELIVERY_HEADER = "X-Assay-Delivery"
MAX_ATTEMPTS = 8  # over about 21 minutes (RETRY_BASE_S doubling), then the delivery fails
RETRY_BASE_S = 10.0
RETRY_MAX_S = 3600.0
LEASE_S = 120.0  # a leased delivery whose relay died is due again after this
RELAY_BATCH = 10  # deliveries a relay sends at once (each within the sender's deadline)
MAX_ERROR_CHARS = 500

EXPORT_EVENTS = {
    ExportStatus.completed: WebhookEvent.export_completed,
    ExportStatus.failed: WebhookEvent.export_failed,
}
JOB_EVENTS = {
    JobStatus.completed: WebhookEvent.job_completed,
    JobStatus.failed: WebhookEvent.job_failed,
    JobStatus.cancelled: WebhookEvent.job_cancelled,
}


def create_webhook(
    uow: UnitOfWork,
    sender: WebhookSender,
    principal: Principal,
    *,
    url: str,
    events: list[WebhookEvent],
    description: str | None = None,
) -> Webhook:
    """Subscribe a URL to outcomes; the URL must reach an address webhooks may (as imports)."""
    try:
        sender.check(url)
    except UrlRefused as exc:
        raise InvalidParams(f"webhook url refused: {exc}", {"field": "url"}) from None
    webhook = Webhook(
        id=new_id(),
        owner_id=principal.owner_id,
        url=url,
        events=sorted(set(events)),
        secret="whsec_" + secrets.token_urlsafe(32),
        description=description,
        created_at=datetime.now(UTC),
    )
    with uow:
        uow.webhooks.add(webhook)
        uow.commit()
    return webhook


def list_webhooks(
    uow: UnitOfWork, principal: Principal, *, after: UUID | None, limit: int
) -> list[Webhook]:
    """The principal's webhooks, oldest first."""
    with uow:
        return uow.webhooks.list(principal, after=after, limit=limit)


def get_webhook(uow: UnitOfWork, principal: Principal, webhook_id: UUID) -> Webhook:
    """One of the principal's webhooks; NotFound for another owner's."""
    with uow:
        webhook = uow.webhooks.get(principal, webhook_id)
    if webhook is None:
        raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": str(webhook_id)})
    return webhook


def delete_webhook(uow: UnitOfWork, principal: Principal, webhook_id: UUID) -> None:
    """Remove a webhook and its delivery history: nothing more is sent to it."""
    with uow:
        if not uow.webhooks.delete(principal, webhook_id):
            raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": str(webhook_id)})
        uow.commit()


def list_deliveries(
    uow: UnitOfWork, principal: Principal, webhook_id: UUID, *, before: UUID | None, limit: int
) -> list[WebhookDelivery]:
    """A webhook's deliveries, newest first; NotFound for another owner's webhook."""
    with uow:
        if uow.webhooks.get(principal, webhook_id) is None:
            raise NotFound(f"webhook {webhook_id} not found", {"webhook_id": str(webhook_id)})
        return uow.webhook_deliveries.list_for_webhook(
            principal, webhook_id, before=before, limit=limit
        )


def announce(
    uow: UnitOfWork, owner_id: str, event: WebhookEvent, subject_id: UUID, data: dict[str, Any]
) -> int:
    """Write an outcome's deliveries in the caller's open transaction (committed with it);
    how many webhooks want it."""
    webhooks = uow.webhooks.subscribed(owner_id, event)
    now = datetime.now(UTC)
    uow.webhook_deliveries.add_many(
        [
            WebhookDelivery(
                id=new_id(),
                webhook_id=webhook.id,
                owner_id=owner_id,
                event=event,
                subject_id=subject_id,
                payload=data,
                next_attempt_at=now,
                created_at=now,
            )
            for webhook in webhooks
        ]
    )
    return len(webhooks)


def announce_job(uow: UnitOfWork, job: Job) -> int:
    """Announce a job that just finished (in the transaction that finished it)."""
    event = JOB_EVENTS.get(job.status)
    if event is None:
        return 0
    data = {
        "job_id": str(job.id),
        "dataset_id": str(job.dataset_id) if job.dataset_id else None,
        "name": job.name,
        "status": job.status.value,
        "error": job.error,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "links": {"self": f"/api/v1/jobs/{job.id}", "result": f"/api/v1/jobs/{job.id}/result"},
    }
    return announce(uow, job.owner_id, event, job.id, data)


def announce_export(uow: UnitOfWork, export_id: UUID) -> int:
    """Announce an export that just completed or failed (in the transaction that ended it)."""
    export = uow.exports.get_for_worker(export_id)
    event = None if export is None else EXPORT_EVENTS.get(export.status)
    if export is None or event is None:
        return 0
    data = {
        "export_id": str(export.id),
        "status": export.status.value,
        "destination": export.destination,
        "table": export.table_name,
        "mode": export.mode.value,
        "rows_loaded": export.rows_loaded,
        "rows_failed": export.rows_failed,
        "error": export.error,
        "finished_at": export.finished_at.isoformat() if export.finished_at else None,
        "links": {"self": f"/api/v1/exports/{export.id}"},
    }
    return announce(uow, export.owner_id, event, export.id, data)


def body_of(delivery: WebhookDelivery) -> bytes:
    """The JSON a delivery POSTs: its id, event, when the outcome happened, and its data."""
    document = {
        "id": str(delivery.id),
        "event": delivery.event.value,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body with the webhook's secret>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_delay_s(attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: 10 s, 20 s, 40 s, ... at most an hour."""
    return float(min(RETRY_BASE_S * 2 ** (attempts - 1), RETRY_MAX_S))


def relay_deliveries(
    new_uow: Callable[[], UnitOfWork],
    sender: WebhookSender,
    *,
    limit: int = RELAY_BATCH,
    max_attempts: int = MAX_ATTEMPTS,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Send the deliveries that are due (one pass of the relay); how many were attempted.

    They go out in parallel, each bounded by the sender's deadline, so a batch ends well within
    its lease and one owner's dead receiver delays nobody else's deliveries by more than that.
    """
    started = now()
    until = started + timedelta(seconds=LEASE_S)
    with new_uow() as uow:
        leased = uow.webhook_deliveries.lease_due(started, until, limit)
        webhooks = {d.webhook_id: uow.webhooks.get_for_relay(d.webhook_id) for d in leased}
        uow.commit()
    sends = [(webhooks[d.webhook_id], d) for d in leased if webhooks[d.webhook_id] is not None]
    if sends:
        with ThreadPoolExecutor(max_workers=min(len(sends), RELAY_BATCH)) as pool:
            futures = [
                pool.submit(_attempt, new_uow, sender, w, d, until, max_attempts, now)
                for w, d in sends
                if w is not None
            ]
            for future in futures:
                future.result()
    return len(leased)


def _attempt(
    new_uow: Callable[[], UnitOfWork],
    sender: WebhookSender,
    webhook: Webhook,
    delivery: WebhookDelivery,
    leased_until: datetime,
    max_attempts: int,
    now: Callable[[], datetime],
) -> None:
    body = body_of(delivery)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(webhook.secret, body),
        TIMESTAMP_HEADER: str(int(now().timestamp())),
        EVENT_HEADER: delivery.event.value,
        DELIVERY_HEADER: str(delivery.id),
    }
    code: int | None = None
    error: str | None = None
    try:
        code = sender.send(webhook.url, body, headers)
        if not 200 <= code < 300:
            error = f"the receiver answered {code}"
    except (WebhookSendFailed, UrlRefused) as exc:
        error = str(exc)[:MAX_ERROR_CHARS]
    attempts = delivery.attempts + 1
    at = now()
    if error is None:
        status, next_at, delivered = DeliveryStatus.delivered, None, at
    elif attempts >= max_attempts:
        status, next_at, delivered = DeliveryStatus.failed, None, None
        log.warning("webhook delivery %s failed for good: %s", delivery.id, error)
    else:
        status, delivered = DeliveryStatus.pending, None
        next_at = at + timedelta(seconds=retry_delay_s(attempts))
    with new_uow() as uow:
        uow.webhook_deliveries.record_attempt(
            delivery.id,
            leased_until=leased_until,
            status=status,
            attempts=attempts,
            next_attempt_at=next_at,
            status_code=code,
            error=error,
            delivered_at=delivered,
        )
        uow.commit()
