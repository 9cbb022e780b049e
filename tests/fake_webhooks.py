"""In-memory webhook repositories and sender for use-case tests (see tests/fakes.py)."""

from __future__ import annotations

import builtins
from datetime import datetime
from uuid import UUID

from ports.fetcher import UrlRefused
from schemas.domain.records import Principal
from schemas.domain.webhooks import DeliveryStatus, Webhook, WebhookDelivery, WebhookEvent
from services.adapters.http_fetcher import parse_url


class FakeWebhooks:
    def __init__(self) -> None:
        self.rows: dict[UUID, Webhook] = {}

    def add(self, webhook: Webhook) -> None:
        self.rows[webhook.id] = webhook

    def get(self, principal: Principal, webhook_id: UUID) -> Webhook | None:
        found = self.rows.get(webhook_id)
        return found if found is not None and found.owner_id == principal.owner_id else None

    def list(
        self, principal: Principal, *, after: UUID | None = None, limit: int | None = None
    ) -> builtins.list[Webhook]:
        mine = sorted(
            (w for w in self.rows.values() if w.owner_id == principal.owner_id),
            key=lambda w: w.id,
        )
        mine = [w for w in mine if after is None or w.id > after]
        return mine if limit is None else mine[:limit]

    def delete(self, principal: Principal, webhook_id: UUID) -> bool:
        if self.get(principal, webhook_id) is None:
            return False
        del self.rows[webhook_id]
        return True

    def get_for_relay(self, webhook_id: UUID) -> Webhook | None:
        return self.rows.get(webhook_id)

    def subscribed(self, owner_id: str, event: WebhookEvent) -> builtins.list[Webhook]:
        return [w for w in self.rows.values() if w.owner_id == owner_id and event in w.events]


class FakeWebhookDeliveries:
    def __init__(self) -> None:
        self.rows: dict[UUID, WebhookDelivery] = {}

    def add_many(self, deliveries: list[WebhookDelivery]) -> None:
        self.rows.update({d.id: d for d in deliveries})

    def list_for_webhook(
        self,
        principal: Principal,
        webhook_id: UUID,
        *,
        before: UUID | None = None,
        limit: int = 50,
    ) -> list[WebhookDelivery]:
        found = [
            d
            for d in self.rows.values()
            if d.webhook_id == webhook_id and d.owner_id == principal.owner_id
            if before is None or d.id < before
        ]
        return sorted(found, key=lambda d: d.id, reverse=True)[:limit]

    def lease_due(self, now: datetime, until: datetime, limit: int) -> list[WebhookDelivery]:
        due = [
            d
            for d in self.rows.values()
            if d.status == DeliveryStatus.pending
            and d.next_attempt_at is not None
            and d.next_attempt_at <= now
        ]
        due = sorted(due, key=lambda d: d.next_attempt_at or now)[:limit]
        for d in due:
            self.rows[d.id] = d.model_copy(update={"next_attempt_at": until})
        return sorted((self.rows[d.id] for d in due), key=lambda d: d.created_at)

    def record_attempt(
        self,
        delivery_id: UUID,
        *,
        leased_until: datetime,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime | None,
        status_code: int | None,
        error: str | None,
        delivered_at: datetime | None,
    ) -> bool:
        held = self.rows[delivery_id]
        if held.status != DeliveryStatus.pending or held.next_attempt_at != leased_until:
            return False
        self.rows[delivery_id] = held.model_copy(
            update={
                "status": status,
                "attempts": attempts,
                "next_attempt_at": next_attempt_at,
                "last_status_code": status_code,
                "last_error": error,
                "delivered_at": delivered_at,
            }
        )
        return True


class FakeWebhookSender:
    """Answers with `answers` in turn (a status code, or an exception to raise); records sends."""

    def __init__(self, answers: list[int | Exception] | None = None) -> None:
        self.answers = list(answers or [])
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.refused_hosts: set[str] = {"10.0.0.1", "169.254.169.254", "localhost"}

    def check(self, url: str) -> None:
        if parse_url(url).host in self.refused_hosts:  # the real scheme and form checks
            raise UrlRefused(f"{url} resolves to an address webhooks may not reach")

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.sent.append((url, body, headers))
        answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, Exception):
            raise answer
        return answer
