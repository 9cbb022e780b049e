"""The processor contract: step input/output, the processor record and its errors.

A processor is a pure function: it reads the typed Parquet copy of a dataset from a
local path, writes artifact files into a private folder and returns a JSON-safe
summary. It knows nothing about the database, object storage or the queue.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.domain.records import ColumnInfo, DatasetFormat
from services.processing.processors.numeric import ProfileCache


class JobCancelled(Exception):
    """Raised by the progress callback when the job must stop."""


class ProcessorInputError(Exception):
    """A data or parameter problem found while running; names the column/row where known."""

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.message = message
        self.column = column
        self.row = row


class MemoryBudgetExceeded(Exception):
    """The work needed more memory than the worker's budget: a failure, never retried (the
    same input would need as much again)."""

    def __init__(self, budget_mib: int | None = None, detail: str = "") -> None:
        message = "exceeded the memory budget"
        if budget_mib is not None:
            message += f" ({budget_mib} MiB)"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.budget_mib, self.detail = budget_mib, detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (MemoryBudgetExceeded, (self.budget_mib, self.detail), self.__dict__)


class ParamsError(Exception):
    """Invalid step parameters; `field` is the path of the first bad field ("columns[1]")."""

    def __init__(
        self, message: str, *, field: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors if errors is not None else [{"field": field, "message": message}]

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: unpickled from its args and state, without __init__.
        return (type(self).__new__, (type(self), *self.args), self.__dict__)


class UnknownProcessor(ParamsError):
    """The step names a processor that is not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown processor {name!r}; available: {', '.join(sorted(known))}",
            field="processor",
        )
        self.name = name


ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class ComputeLimits:
    """Engine tuning for a step, from the worker's memory budget; the job engine passes it on."""

    memory_limit: str = "512MiB"  # DuckDB memory_limit (it spills to disk beyond it)
    batch_memory_bytes: int = 512 * 1024**2  # column values held in numpy at once
    threads: int | None = None  # DuckDB's and the profiling pool's (default: every core)


@dataclass(frozen=True)
class StepInput:
    parquet_path: Path  # local file, the typed copy
    columns: list[ColumnInfo]  # the dataset schema
    dataset_format: DatasetFormat  # normalize's default output format
    output_dir: Path  # artifact files go here (exists, empty, private to this step)
    artifact_suffix: str  # "" for the first step of a processor in a job, then "-2", "-3"...
    report: ProgressCallback  # (0..1, message); raises JobCancelled when the job is cancelled
    limits: ComputeLimits = ComputeLimits()
    spill_dir: Path | None = None  # where DuckDB spills beyond memory_limit (default: /tmp)
    # Column statistics shared by the steps of a job (they all read the same parquet_path).
    profiles: ProfileCache = field(default_factory=ProfileCache)


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    path: Path
    content_type: str
    sha256: str | None = None  # when the processor hashed it while writing


@dataclass(frozen=True)
class StepOutput:
    summary: dict[str, Any]  # JSON-safe: no NaN/inf (None instead)
    artifacts: list[ArtifactFile]


@dataclass(frozen=True)
class Processor:
    name: str
    description: str
    params_model: type[BaseModel]  # extra="forbid"; its JSON schema is served by the API
    artifacts: list[str]  # artifact base names it may write, e.g. ["anomalies.csv"]
    run: Callable[[StepInput, Any], StepOutput]
    check_columns: Callable[[Any, list[ColumnInfo]], None]  # raises ParamsError
    # Spends long stretches inside a library call that cannot see a cancel (a model fit): its
    # jobs always run in a child process, which a cancel kills, whatever the data's size.
    isolated: bool = False


def artifact_name(base: str, suffix: str) -> str:
    """Insert the step suffix before the extension: ("anomalies.csv", "-2") -> "anomalies-2.csv"."""
    stem, dot, ext = base.partition(".")
    return f"{stem}{suffix}{dot}{ext}"
