"""Export ports: the `exports` records and the loader that writes a table in a destination."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from schemas.domain.exports import (
    Export,
    ExportEvent,
    ExportFailedRow,
    ExportMode,
    ExportStatus,
)
from schemas.domain.records import Principal


class ExportRepository(Protocol):
    """Exports, their events and their rejected rows. Reads for a request take the Principal;
    the others are for the worker and the recovery loop."""

    def add(self, export: Export) -> None:
        """Insert a new export."""
        ...

    def get(self, export_id: UUID, principal: Principal) -> Export | None:
        """One of the principal's exports; None when missing or another owner's."""
        ...

    def get_for_worker(self, export_id: UUID) -> Export | None:
        """One export whoever owns it: for workers and recovery, never for a request."""
        ...

    def list(
        self,
        principal: Principal,
        *,
        status: ExportStatus | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Export]:
        """The principal's exports, newest first; `before` is the last id of the previous page."""
        ...

    def claim(self, export_id: UUID, worker_id: str, now: datetime) -> Export | None:
        """Compare-and-set queued -> running (attempts + 1); None when not claimable."""
        ...

    def heartbeat(
        self, export_id: UUID, attempt: int, now: datetime, *, progress: float, message: str
    ) -> bool | None:
        """Liveness and progress of the running attempt: cancel_requested, or None when the
        export no longer runs this attempt (the caller must stop)."""
        ...

    def transition(
        self,
        export_id: UUID,
        from_statuses: Sequence[ExportStatus],
        to_status: ExportStatus,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> bool:
        """Compare-and-set the status (and the attempt, when given); False if it did not match."""
        ...

    def request_cancel(self, export_id: UUID) -> bool:
        """Set cancel_requested on a queued or running export; False once it finished."""
        ...

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        """How many queued or running exports read the dataset."""
        ...

    def list_stale_running(
        self, heartbeat_before: datetime, limit: int = 100
    ) -> builtins.list[Export]:
        """Running exports whose last heartbeat is older than the given time."""
        ...

    def list_unclaimed_queued(
        self, updated_before: datetime, limit: int = 100
    ) -> builtins.list[Export]:
        """Queued exports not touched since the given time."""
        ...

    def touch(self, export_id: UUID) -> bool:
        """Set a queued export's updated_at to now; False when it is not queued."""
        ...

    def add_event(self, event: ExportEvent) -> None:
        """Append an event to an export's history."""
        ...

    def list_events(
        self, principal: Principal, export_id: UUID, *, after_id: int = 0, limit: int = 500
    ) -> builtins.list[ExportEvent]:
        """Events of one of the principal's exports in order, after `after_id`."""
        ...

    def add_failed_rows(self, rows: Iterable[ExportFailedRow]) -> None:
        """Record rows the target rejected."""
        ...

    def delete_failed_rows(self, export_id: UUID, *, keep_attempt: int | None = None) -> None:
        """Forget the rejected rows of the attempts other than `keep_attempt` (all when None)."""
        ...

    def list_failed_rows(
        self, principal: Principal, export_id: UUID, *, after_row: int = 0, limit: int = 100
    ) -> builtins.list[ExportFailedRow]:
        """Rejected rows of one of the principal's exports by row number, after `after_row`."""
        ...


class DestinationError(Exception):
    """The destination refused the load as a whole (the table exists in create mode, a column
    is missing, a permission): retrying will not help."""


class DestinationUnavailable(Exception):
    """The destination could not be reached; another attempt may succeed."""


class LoadCancelled(Exception):
    """`should_stop` asked the load to stop; nothing was applied to the target."""


@dataclass(frozen=True)
class LoadRequest:
    export_id: UUID
    attempt: int
    destination: str
    table: str  # validated: `name` or `schema.name`
    mode: ExportMode
    source: Path  # Parquet (a dataset's typed copy, a Parquet artifact) or CSV (an artifact)
    owner_id: str = ""  # the export's owner: a table one owner's export created is theirs


@dataclass(frozen=True)
class LoadSummary:
    rows_loaded: int
    rows_failed: int
    attempt: int | None = None  # the attempt that applied the load, when known


@dataclass(frozen=True)
class RejectedRow:
    row_number: int  # 1-based
    values: dict[str, Any]
    reason: str


class TableLoader(Protocol):
    """Loads a file into a table of a named destination, through a staging table."""

    def destinations(self) -> builtins.list[str]:
        """The names of the configured destinations."""
        ...

    def applied(self, request: LoadRequest) -> LoadSummary | None:
        """What an earlier attempt of this export applied to the target, if one did."""
        ...

    def load(
        self,
        request: LoadRequest,
        *,
        progress: Callable[[int, int], None],
        rejected: Callable[[builtins.list[RejectedRow]], None],
        should_stop: Callable[[], bool],
    ) -> LoadSummary:
        """Stream the file into a staging table, then apply it to the target in one
        transaction; `progress(rows_done, rows_total)`, `rejected(rows)` as they are found;
        LoadCancelled when should_stop() turned true (the target untouched)."""
        ...
