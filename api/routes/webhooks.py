"""Webhooks: an owner's URLs that receive a signed POST for each outcome they subscribe to."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, WriterDep
from api.deps import ContextDep, UowDep
from api.openapi import READ, WRITE, errors
from api.pagination import fetch_size, page_of
from ports.webhooks import WebhookSender
from schemas.api import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookOut,
    WebhookPage,
)
from schemas.domain.webhooks import Webhook
from use_cases.webhooks import (
    create_webhook,
    delete_webhook,
    get_webhook,
    list_deliveries,
    list_webhooks,
)

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


async def _sender(context: ContextDep) -> WebhookSender:
    return context.webhook_sender


SenderDep = Annotated[WebhookSender, Depends(_sender)]


def webhook_out(webhook: Webhook) -> WebhookOut:
    base = f"/api/v1/webhooks/{webhook.id}"
    return WebhookOut(
        **webhook.model_dump(include={"id", "url", "events", "description", "created_at"}),
        links={"self": base, "deliveries": f"{base}/deliveries"},
    )


@router.post("", status_code=201, responses=errors(400, 422, *WRITE))
async def create(
    body: WebhookCreate, uow: UowDep, sender: SenderDep, principal: WriterDep
) -> WebhookCreated:
    """Subscribe a URL to outcomes; the response is the only time the signing secret is shown."""
    # In a thread: the URL's host is resolved to check where it points.
    webhook = await run_in_threadpool(
        create_webhook,
        uow,
        sender,
        principal,
        url=body.url,
        events=body.events,
        description=body.description,
    )
    return WebhookCreated(**webhook_out(webhook).model_dump(), secret=webhook.secret)


@router.get("", responses=errors(*READ))
def list_all(
    uow: UowDep,
    principal: PrincipalDep,
    cursor: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WebhookPage:
    """Webhooks, oldest first, without secrets; pass `next_cursor` back as `cursor`."""
    fetched = list_webhooks(uow, principal, after=cursor, limit=fetch_size(limit))
    page = page_of(fetched, limit, lambda w: str(w.id))
    return WebhookPage(items=[webhook_out(w) for w in page.items], next_cursor=page.next_cursor)


@router.get("/{webhook_id}", responses=errors(404, *READ))
def get_one(webhook_id: UUID, uow: UowDep, principal: PrincipalDep) -> WebhookOut:
    """One webhook, without its secret."""
    return webhook_out(get_webhook(uow, principal, webhook_id))


@router.delete("/{webhook_id}", status_code=204, responses=errors(404, *WRITE))
def delete(webhook_id: UUID, uow: UowDep, principal: WriterDep) -> Response:
    """Remove a webhook and its delivery history; nothing more is sent to it."""
    delete_webhook(uow, principal, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", responses=errors(404, *READ))
def deliveries(
    webhook_id: UUID,
    uow: UowDep,
    principal: PrincipalDep,
    cursor: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WebhookDeliveryPage:
    """The webhook's deliveries, newest first: status, attempts, the receiver's last answer."""
    fetched = list_deliveries(uow, principal, webhook_id, before=cursor, limit=fetch_size(limit))
    page = page_of(fetched, limit, lambda d: str(d.id))
    return WebhookDeliveryPage(
        items=[WebhookDeliveryOut.model_validate(d, from_attributes=True) for d in page.items],
        next_cursor=page.next_cursor,
    )
