"""SQL repositories for webhooks and their outbox of deliveries."""

from __future__ import annotations

import builtins
from datetime import datetime
from uuid import UUID

from sqlalchemy import Connection, delete, insert, select, update

from db.models import WebhookDeliveryRow, WebhookRow
from repositories.datasets import record_values, table_of
from schemas.domain.records import Principal
from schemas.domain.webhooks import DeliveryStatus, Webhook, WebhookDelivery, WebhookEvent

WEBHOOKS = table_of(WebhookRow)
DELIVERIES = table_of(WebhookDeliveryRow)


class SqlWebhookRepository:
    """Webhooks in the `webhooks` table."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, webhook: Webhook) -> None:
        """Record a new webhook."""
        self._db.execute(insert(WEBHOOKS).values(record_values(WEBHOOKS, webhook)))

    def get(self, principal: Principal, webhook_id: UUID) -> Webhook | None:
        """One of the principal's webhooks (None for another owner's)."""
        query = select(WEBHOOKS).where(
            WEBHOOKS.c.id == webhook_id, WEBHOOKS.c.owner_id == principal.owner_id
        )
        row = self._db.execute(query).mappings().one_or_none()
        return Webhook.model_validate(row) if row is not None else None

    def list(
        self, principal: Principal, *, after: UUID | None = None, limit: int | None = None
    ) -> builtins.list[Webhook]:
        """The principal's webhooks, oldest first (ids are UUIDv7)."""
        query = select(WEBHOOKS).where(WEBHOOKS.c.owner_id == principal.owner_id)
        if after is not None:
            query = query.where(WEBHOOKS.c.id > after)
        query = query.order_by(WEBHOOKS.c.id)
        if limit is not None:
            query = query.limit(limit)
        return [Webhook.model_validate(row) for row in self._db.execute(query).mappings()]

    def delete(self, principal: Principal, webhook_id: UUID) -> bool:
        """Remove one of the principal's webhooks and its deliveries; False when not found."""
        if self.get(principal, webhook_id) is None:
            return False
        # Deliveries first: SQLite enforces ON DELETE CASCADE only with foreign keys turned on.
        self._db.execute(delete(DELIVERIES).where(DELIVERIES.c.webhook_id == webhook_id))
        self._db.execute(delete(WEBHOOKS).where(WEBHOOKS.c.id == webhook_id))
        return True

    def get_for_relay(self, webhook_id: UUID) -> Webhook | None:
        """One webhook whoever owns it: for the relay, never for a request."""
        row = self._db.execute(select(WEBHOOKS).where(WEBHOOKS.c.id == webhook_id)).mappings()
        found = row.one_or_none()
        return Webhook.model_validate(found) if found is not None else None

    def subscribed(self, owner_id: str, event: WebhookEvent) -> builtins.list[Webhook]:
        """The owner's webhooks that want `event` (an owner has a few: filtered here)."""
        query = select(WEBHOOKS).where(WEBHOOKS.c.owner_id == owner_id).order_by(WEBHOOKS.c.id)
        webhooks = [Webhook.model_validate(row) for row in self._db.execute(query).mappings()]
        return [w for w in webhooks if event in w.events]


class SqlWebhookDeliveryRepository:
    """The outbox of deliveries, in the `webhook_deliveries` table."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add_many(self, deliveries: builtins.list[WebhookDelivery]) -> None:
        """Record deliveries to send."""
        if deliveries:
            rows = [record_values(DELIVERIES, d) for d in deliveries]
            self._db.execute(insert(DELIVERIES), rows)

    def list_for_webhook(
        self,
        principal: Principal,
        webhook_id: UUID,
        *,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[WebhookDelivery]:
        """A webhook's delivery history, newest first (none for another owner's webhook)."""
        query = select(DELIVERIES).where(
            DELIVERIES.c.webhook_id == webhook_id, DELIVERIES.c.owner_id == principal.owner_id
        )
        if before is not None:
            query = query.where(DELIVERIES.c.id < before)
        query = query.order_by(DELIVERIES.c.id.desc()).limit(limit)
        return [WebhookDelivery.model_validate(r) for r in self._db.execute(query).mappings()]

    def lease_due(
        self, now: datetime, until: datetime, limit: int
    ) -> builtins.list[WebhookDelivery]:
        """Pending deliveries due by `now`, each moved to `until`; rows another relay holds
        locked are skipped (PostgreSQL), SQLite has one writer at a time."""
        due = (
            select(DELIVERIES.c.id)
            .where(
                DELIVERIES.c.status == DeliveryStatus.pending.value,
                DELIVERIES.c.next_attempt_at <= now,
            )
            .order_by(DELIVERIES.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(due.scalar_subquery()))
            .values(next_attempt_at=until)
            .returning(*DELIVERIES.c)
        )
        rows = self._db.execute(statement).mappings().all()
        leased = [WebhookDelivery.model_validate(row) for row in rows]
        return sorted(leased, key=lambda d: d.created_at)

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
        """Store how an attempt went if this relay still holds the lease (compare-and-set)."""
        statement = (
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id == delivery_id,
                DELIVERIES.c.status == DeliveryStatus.pending.value,
                DELIVERIES.c.next_attempt_at == leased_until,
            )
            .values(
                status=status.value,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                last_status_code=status_code,
                last_error=error,
                delivered_at=delivered_at,
            )
        )
        return self._db.execute(statement).rowcount == 1
