"""Errors use cases raise; the API maps each to an HTTP status."""

from typing import Any


class UseCaseError(Exception):
    """Base: a message for the client plus optional structured details."""

    code = "error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotFound(UseCaseError):
    code = "not_found"


class Conflict(UseCaseError):
    code = "conflict"


class InvalidInput(UseCaseError):
    code = "invalid_input"


class InvalidParams(UseCaseError):
    """Well-formed request whose content cannot be used (unknown processor, bad params, column)."""

    code = "invalid_params"


class PayloadTooLarge(UseCaseError):
    code = "payload_too_large"


class UnsupportedFormat(UseCaseError):
    code = "unsupported_format"


class Unauthenticated(UseCaseError):
    """No credentials, or credentials that name no valid key."""

    code = "unauthenticated"


class Forbidden(UseCaseError):
    """A valid key whose scope does not allow the operation."""

    code = "forbidden"


class QuotaExceeded(PayloadTooLarge):
    """Storing this would take the owner past their storage quota."""

    code = "quota_exceeded"


class RateLimited(UseCaseError):
    """Too many requests of one kind from one owner; `details["retry_after_s"]` says when."""

    code = "rate_limited"
