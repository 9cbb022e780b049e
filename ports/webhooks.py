"""Webhook ports: subscriptions, their outbox of deliveries, and the HTTP sender."""

# Within a class that defines a `list` method the name means that method, hence
# `builtins.list` in the annotations of such classes.
from __future__ import annotations

import builtins
from datetime import datetime
from typing import Protocol
from uuid import UUID

from schemas.domain.records import Principal
from schemas.domain.webhooks import DeliveryStatus, Webhook, WebhookDelivery, WebhookEvent


class WebhookRepository(Protocol):
    """An owner's webhooks."""

    def add(self, webhook: Webhook) -> None:
        """Record a new webhook."""
        ...

    def get(self, principal: Principal, webhook_id: UUID) -> Webhook | None:
        """One of the principal's webhooks (None for another owner's)."""
        ...

    def list(
        self, principal: Principal, *, after: UUID | None = None, limit: int | None = None
    ) -> builtins.list[Webhook]:
        """The principal's webhooks, oldest first; at most `limit`, after the webhook `after`."""
        ...

    def delete(self, principal: Principal, webhook_id: UUID) -> bool:
        """Remove one of the principal's webhooks and its deliveries; False when not found."""
        ...

    def get_for_relay(self, webhook_id: UUID) -> Webhook | None:
        """One webhook whoever owns it: for the relay, never for a request."""
        ...

    def subscribed(self, owner_id: str, event: WebhookEvent) -> builtins.list[Webhook]:
        """The owner's webhooks that want `event`: for the outcome's own transaction."""
        ...


class WebhookDeliveryRepository(Protocol):
    """The outbox: deliveries written with the outcome they announce, sent by the relay."""

    def add_many(self, deliveries: builtins.list[WebhookDelivery]) -> None:
        """Record deliveries to send."""
        ...

    def list_for_webhook(
        self,
        principal: Principal,
        webhook_id: UUID,
        *,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[WebhookDelivery]:
        """A webhook's delivery history, newest first, those older than the delivery `before`
        when given (none for another owner's webhook)."""
        ...

    def lease_due(
        self, now: datetime, until: datetime, limit: int
    ) -> builtins.list[WebhookDelivery]:
        """Pending deliveries due by `now`, oldest first, each moved to `until` so that no other
        relay takes it meanwhile: for the relay, across owners."""
        ...

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
        """Store how an attempt went, if the delivery is still leased until `leased_until` (a
        relay whose lease ran out and was taken over records nothing); whether it was stored."""
        ...


class WebhookSendFailed(Exception):
    """No answer from the receiver: refused address, connection or timeout; says which."""


class WebhookSender(Protocol):
    """POSTs deliveries, connecting only to addresses the webhook policy allows."""

    def check(self, url: str) -> None:
        """Raise UrlRefused unless the URL is http(s) and its host may be reached now."""
        ...

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST the body; the receiver's status code, or WebhookSendFailed."""
        ...
