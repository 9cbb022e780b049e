"""Worker-side wiring of the job engine: which errors are transient, and the engine's limits."""

from sqlalchemy.exc import InterfaceError, OperationalError

from ports.repositories import DatabaseUnavailable
from ports.storage import StorageUnavailable
from schemas.settings import Settings
from use_cases.run_job import EngineLimits

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


def engine_limits(settings: Settings) -> EngineLimits:
    return EngineLimits(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_attempts=settings.job_max_attempts,
        # A quarter for DuckDB, half for numpy columns, the rest for the interpreter and libraries.
        memory_limit=f"{settings.worker_memory_budget_mb // 4}MiB",
        batch_memory_bytes=settings.worker_memory_budget_mb * 1024**2 // 2,
    )
