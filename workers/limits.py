"""The worker's memory budget (ASSAY_WORKER_MEMORY_BUDGET_MB) split between its engines."""

from typing import TYPE_CHECKING

from schemas.settings import Settings

if TYPE_CHECKING:
    from use_cases.run_job import EngineLimits


def engine_limits(settings: Settings) -> "EngineLimits":
    from use_cases.run_job import EngineLimits

    return EngineLimits(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_attempts=settings.job_max_attempts,
        # 3/8 for DuckDB, half for numpy columns: a step profiles columns (numpy holds them,
        # DuckDB only scans) or writes its output (DuckDB buffers), not both at once; an ordered
        # CSV COPY is as fast with 3/8 as with more (measurements: docs/decisions.md).
        memory_limit=f"{settings.worker_memory_budget_mb * 3 // 8}MiB",
        batch_memory_bytes=settings.worker_memory_budget_mb * 1024**2 // 2,
    )


def ingest_memory_limit(settings: Settings) -> str:
    """DuckDB's limit while a worker converts an upload: half the budget (the CSV -> Parquet
    COPY is no slower with it), the rest for the interpreter and libraries."""
    return f"{settings.worker_memory_budget_mb // 2}MiB"
