"""Every error leaves as JSON {"error": {"code", "message", "details"}} with the right status."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from ports.queue import QueueUnavailable
from ports.repositories import DatabaseUnavailable
from ports.storage import ObjectNotFound, StorageUnavailable
from use_cases.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidParams,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    UnsupportedFormat,
    UseCaseError,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[UseCaseError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 400,
    InvalidParams: 422,
    PayloadTooLarge: 413,
    QuotaExceeded: 413,
    RateLimited: 429,
    UnsupportedFormat: 415,
    Unauthenticated: 401,
    Forbidden: 403,
}
# Outages, not bugs: a 503 that names the kind of dependency down, and the client may retry.
# Connection-level database errors count (the driver's OperationalError, InterfaceError).
OUTAGES: dict[type[Exception], str] = {
    DatabaseUnavailable: "database",
    OperationalError: "database",
    InterfaceError: "database",
    StorageUnavailable: "storage",
    QueueUnavailable: "broker",
}
RETRY_AFTER_S = 5
# RFC 6750: a 401 names the scheme the client should use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="assay"'}
# An error quotes at most this much of a value the client sent (see `clip`).
ECHO_CHARS = 64
# Whatever went into an error, its body holds no longer strings than these: a message or detail
# that quotes client input in full cannot make the answer as large as the request.
MAX_MESSAGE_CHARS = 1024
MAX_DETAIL_CHARS = 256


def clip(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` cut to `limit` characters, with "…" where it was cut."""
    return value if len(value) <= limit else value[:limit] + "…"


def _clipped(value: Any) -> Any:
    """Every string in a JSON-ready value (keys included) clipped to MAX_DETAIL_CHARS."""
    if isinstance(value, str):
        return clip(value, MAX_DETAIL_CHARS)
    if isinstance(value, dict):
        return {clip(str(k), MAX_DETAIL_CHARS): _clipped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clipped(item) for item in value]
    return value


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "code": code,
            "message": clip(message, MAX_MESSAGE_CHARS),
            "details": _clipped(jsonable_encoder(details or {})),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def allowed_methods(request: Request, routers: Sequence[APIRouter]) -> list[str]:
    """Every method a route serves at the request's path (Starlette's 405 names only the first
    route's, and a path often has several: GET and POST /api/v1/datasets)."""
    methods: set[str] = set()
    for router in (request.app.router, *routers):
        for route in router.routes:
            if isinstance(route, Route) and route.methods:
                match, _ = route.matches(request.scope)
                if match != Match.NONE:
                    methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI, routers: Sequence[APIRouter] = ()) -> None:
    """JSON errors for everything; `routers` are those the app includes (for 405's Allow)."""

    @app.exception_handler(UseCaseError)
    async def _use_case_error(_: Request, exc: UseCaseError) -> JSONResponse:
        status = STATUS_BY_ERROR.get(type(exc), 400)
        headers = CHALLENGE if status == 401 else None
        if status == 429:
            headers = {"Retry-After": str(exc.details["retry_after_s"])}
        return error_response(status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                # A location can hold a key of the client's JSON object.
                "location": [
                    clip(part) if isinstance(part, str) else part for part in error.get("loc", ())
                ],
                "message": error.get("msg"),
                "type": error.get("type"),
            }
            for error in exc.errors()
        ]
        first = problems[0] if problems else {"location": [], "message": "invalid request"}
        where = ".".join(str(part) for part in first["location"])
        return error_response(
            422, "validation_error", f"{where}: {first['message']}", {"errors": problems}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid_input", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request, routers)
            headers["Allow"] = ", ".join(allowed) if allowed else headers.get("Allow", "")
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(ObjectNotFound)
    async def _object_missing(_: Request, exc: ObjectNotFound) -> JSONResponse:
        return error_response(404, "not_found", f"stored object is missing: {exc}")

    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        dependency = next(name for kind, name in OUTAGES.items() if isinstance(exc, kind))
        # Where it runs (hosts, ports, paths) is for the operator's log, not for clients.
        log.warning("%s unavailable: %s: %s", dependency, type(exc).__name__, exc)
        return error_response(
            503,
            "service_unavailable",
            f"the {dependency} is unavailable; try again shortly",
            {"dependency": dependency, "retry": True},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for kind in OUTAGES:
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
