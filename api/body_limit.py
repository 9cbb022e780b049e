"""Request bodies over a limit get 413 before they are read whole.

FastAPI reads a JSON body into memory in one piece, so without a bound one large request can
take the API's memory. This pure ASGI middleware refuses at once a body whose Content-Length
says it is too large, and counts the bytes of any other (chunked) body as the app receives
them, stopping at the limit. Routes that stream their body themselves (the multipart upload,
with a limit of its own) are exempt.
"""

from collections.abc import Collection

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

# Longer than any real length (20 digits: 10**20 bytes); a longer value counts as this much,
# and int() is never asked to parse thousands of digits.
MAX_LENGTH_DIGITS = 20


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body parsing passes it on
    (it turns any other error there into a 400)."""

    def __init__(self, max_bytes: int, *, request_bytes: int | None, received_bytes: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {max_bytes} bytes")
        self.max_bytes = max_bytes
        self.details: dict[str, int] = {"max_json_body_bytes": max_bytes}
        if request_bytes is not None:
            self.details["request_bytes"] = request_bytes
        else:
            self.details["received_bytes"] = received_bytes


def declared_length(value: str | None) -> int | None:
    """The Content-Length header as a number; None when absent or not a number."""
    if not value or not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) <= MAX_LENGTH_DIGITS else 10**MAX_LENGTH_DIGITS


def too_large_response(exc: BodyTooLarge) -> JSONResponse:
    return error_response(413, "payload_too_large", str(exc.detail), exc.details)


class BodyLimit:
    """Pure ASGI middleware: at most `max_bytes` of request body, except on `exempt` routes
    ((method, path) pairs whose handlers stream and bound their body themselves)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, exempt: Collection[tuple[str, str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = declared_length(value.decode("latin-1"))
                break
        if declared is not None and declared > max_bytes:
            # Nothing of the body is read: the answer does not wait for it.
            exc = BodyTooLarge(max_bytes, request_bytes=declared, received_bytes=0)
            await too_large_response(exc)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes, request_bytes=None, received_bytes=received)
            return message

        async def noted_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, noted_send)
        except BodyTooLarge as exc:
            # Normally answered by the app's handler; this covers a body read where none runs.
            if started:
                raise
            await too_large_response(exc)(scope, receive, send)


def install_body_limit(app: FastAPI, max_bytes: int, exempt: Collection[tuple[str, str]]) -> None:
    """Bound request bodies to `max_bytes` (413 with the JSON error body) except on `exempt`."""

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return too_large_response(exc)

    app.add_middleware(BodyLimit, max_bytes=max_bytes, exempt=exempt)
