"""What the client raises: the API's error body as an exception, and transport failures."""

from typing import Any

import httpx


class AssayClientError(Exception):
    """Anything the client raises on purpose."""


class ApiError(AssayClientError):
    """The API answered with an error: its HTTP status and its `{"error": {...}}` body."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        """The error of a response, also when its body is not the API's JSON (a proxy's page)."""
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
            details = error.get("details") or {}
        except (ValueError, KeyError, TypeError):
            code = "http_error"
            message = response.text[:200] or response.reason_phrase
            details = {}
        return cls(
            response.status_code, code, message, details if isinstance(details, dict) else {}
        )


class AssayConnectionError(AssayClientError):
    """The server could not be reached, or the connection broke and could not be resumed."""


class WaitTimeout(AssayClientError):
    """A wait for a dataset or a job to finish ran out of time."""
