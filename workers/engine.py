"""Worker-side wiring of the job engine: which errors are transient, and the engine's limits."""

from typing import TYPE_CHECKING

from sqlalchemy.exc import InterfaceError, OperationalError

from ports.repositories import DatabaseUnavailable
from ports.storage import StorageUnavailable
from schemas.settings import Settings

if TYPE_CHECKING:
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


def engine_limits(settings: Settings) -> "EngineLimits":
    from use_cases.run_job import EngineLimits

    return EngineLimits(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_attempts=settings.job_max_attempts,
        # 3/8 for DuckDB, half for numpy columns: a step profiles columns (numpy holds them,
        # DuckDB only scans) or writes its output (DuckDB buffers), not both at once. An
        # ordered CSV COPY fills what DuckDB is given: 384 MiB writes 780 MB as fast as 1 GB.
        memory_limit=f"{settings.worker_memory_budget_mb * 3 // 8}MiB",
        batch_memory_bytes=settings.worker_memory_budget_mb * 1024**2 // 2,
    )


def ingest_memory_limit(settings: Settings) -> str:
    """DuckDB's limit while a worker converts an upload: half the budget (the CSV -> Parquet
    COPY runs as fast at 384 MiB as at 1 GB), the rest for the interpreter and libraries."""
    return f"{settings.worker_memory_budget_mb // 2}MiB"
