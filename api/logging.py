"""Request ids and the API's log context: who asked, under which id, in every log line."""

import logging
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING
from uuid import uuid4

from schemas.domain.records import Principal

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# A client's own id is kept when it is short and plain (it lands in logs and job events).
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
owner_var: ContextVar[str | None] = ContextVar("owner", default=None)


def current_request_id() -> str | None:
    """The id of the request being served (None outside a request)."""
    return request_id_var.get()


def accepted_request_id(value: bytes | None) -> str | None:
    """A client's X-Request-ID if it is acceptable as it is, else None."""
    if value is None or not _VALID_ID.fullmatch(value):
        return None
    return value.decode("ascii")


class RequestId:
    """Pure ASGI middleware: give every request an id, answer it in X-Request-ID, and put it
    in the log context of everything the request does."""

    def __init__(self, app: "ASGIApp") -> None:
        self.app = app

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for key, value in scope["headers"]:
            if key == _HEADER_KEY:
                sent = value
                break
        request_id = accepted_request_id(sent) or uuid4().hex
        header = (_HEADER_KEY, request_id.encode("ascii"))

        async def send_with_id(message: "Message") -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            owner_var.set(None)


def bind_owner(principal: Principal) -> None:
    """The caller's owner id joins the request's log context.

    Call it from an async dependency: that runs in the request's own task, so the route, the
    access log and the middleware see the value (a sync one would set it in a worker thread).
    """
    owner_var.set(principal.owner_id)


class RequestLogContext(logging.Filter):
    """Adds request_id and owner to every record logged while a request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        owner = owner_var.get()
        if owner is not None and not hasattr(record, "owner"):
            record.owner = owner
        return True
