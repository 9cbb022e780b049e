"""The worker's memory budget (ASSAY_WORKER_MEMORY_BUDGET_MB) split between its engines."""

from typing import TYPE_CHECKING

from schemas.settings import Settings

if TYPE_CHECKING:
    from services.processing.processors.base import ComputeLimits
    from use_cases.datasets import IngestLimits
    from use_cases.run_job import EngineSettings


def engine_settings(settings: Settings) -> "EngineSettings":
    """The job engine's own settings: heartbeat period, attempts and the memory ceiling."""
    from use_cases.run_job import EngineSettings

    return EngineSettings(
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_attempts=settings.job_max_attempts,
        # The ceiling of a job's memory: a job that is not provably small runs in a child
        # process killed above it (docs/decisions.md, "A job's memory is a ceiling").
        memory_budget_mb=settings.worker_memory_budget_mb,
    )


def compute_limits(settings: Settings) -> "ComputeLimits":
    """What each step may use of the budget; the engine hands it to processors unread."""
    # Imported here: the processors load DuckDB and numpy, which a worker's main process
    # (it only consumes messages and runs the reaper) does not need.
    from services.processing.processors.base import ComputeLimits

    return ComputeLimits(
        # 3/8 for DuckDB, half for numpy columns: a step profiles columns (numpy holds them,
        # DuckDB only scans) or writes its output (DuckDB buffers), not both at once; an ordered
        # CSV COPY is as fast with 3/8 as with more (measurements: docs/decisions.md).
        memory_limit=f"{settings.worker_memory_budget_mb * 3 // 8}MiB",
        batch_memory_bytes=settings.worker_memory_budget_mb * 1024**2 // 2,
    )


def ingest_limits(settings: Settings) -> "IngestLimits":
    """What converting an upload may take: DuckDB gets half the budget (the CSV -> Parquet COPY
    is no slower with it), the rest is for the interpreter and libraries; the conversion runs
    in a child process killed above the whole budget."""
    from use_cases.datasets import IngestLimits

    return IngestLimits(
        memory_limit=f"{settings.worker_memory_budget_mb // 2}MiB",
        memory_budget_mb=settings.worker_memory_budget_mb,
        max_rows=settings.max_rows,
    )
