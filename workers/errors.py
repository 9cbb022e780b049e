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
    """Errors worth another attempt: a dependency was briefly unreachable. Running out of
    memory is not (MemoryBudgetExceeded, MemoryError, DuckDB's Out of Memory): the same input
    would need as much again; the job engine fails such a job before asking."""
    return isinstance(exc, TRANSIENT_ERRORS)
