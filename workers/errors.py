"""Which errors a worker treats as transient: worth another attempt, not a failed job."""

from sqlalchemy.exc import InterfaceError, OperationalError

from ports.repositories import DatabaseUnavailable
from ports.storage import StorageUnavailable

TRANSIENT_ERRORS = (
    StorageUnavailable,
    DatabaseUnavailable,
    OperationalError,
    InterfaceError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Errors worth another attempt: a dependency was briefly unreachable."""
    return isinstance(exc, TRANSIENT_ERRORS)
