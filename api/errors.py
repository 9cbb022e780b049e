"""Every error leaves as JSON {"error": {"code", "message", "details"}} with the right status."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    UnsupportedFormat: 415,
    Unauthenticated: 401,
    Forbidden: 403,
}
# RFC 6750: a 401 names the scheme the client should use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="assay"'}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UseCaseError)
    async def _use_case_error(_: Request, exc: UseCaseError) -> JSONResponse:
        status = STATUS_BY_ERROR.get(type(exc), 400)
        headers = CHALLENGE if status == 401 else None
        return error_response(status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "location": list(error.get("loc", ())),
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
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(ObjectNotFound)
    async def _object_missing(_: Request, exc: ObjectNotFound) -> JSONResponse:
        return error_response(404, "not_found", f"stored object is missing: {exc}")

    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable: %s", exc)
        return error_response(503, "service_unavailable", str(exc), {"retry": True})

    # Connection-level database errors are outages, not bugs: the client may retry.
    outages = (
        DatabaseUnavailable,
        StorageUnavailable,
        QueueUnavailable,
        OperationalError,
        InterfaceError,
    )
    for kind in outages:
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
