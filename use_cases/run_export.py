"""The worker side of exports: claim, load through the loader with heartbeat and cancel
checks, end exactly once (the same rules as use_cases/run_job.py)."""

import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from ports.exports import (
    DestinationError,
    DestinationUnavailable,
    LoadCancelled,
    LoadRequest,
    LoadSummary,
    RejectedRow,
    TableLoader,
)
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from schemas.domain.exports import Export, ExportFailedRow, ExportStatus
from schemas.domain.records import KeyScope, Principal
from use_cases.exports import event
from use_cases.scratch import owner_suffix
from use_cases.webhooks import announce_export

log = logging.getLogger(__name__)


class Outcome:
    skipped = "skipped"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    retry = "retry"
    lost = "lost"


class _Lost(Exception):
    """The export no longer runs this attempt (reaped, or cancelled and ended elsewhere)."""


class _Beat:
    """Heartbeat thread of a running export: liveness, progress (events at most once a
    second) and the cancel flag, off the load's path."""

    def __init__(
        self, new_uow: Callable[[], UnitOfWork], export: Export, interval_s: float
    ) -> None:
        self._new_uow, self._export, self._interval_s = new_uow, export, interval_s
        self.progress, self.message = 0.0, "started"
        self.cancelled, self.lost = threading.Event(), threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last_event = 0.0

    def __enter__(self) -> "_Beat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.beat()
            except Exception:  # a DB hiccup must not stop the heartbeat; the next one retries
                log.warning("heartbeat of export %s failed", self._export.id, exc_info=True)

    def beat(self) -> None:
        export = self._export
        with self._new_uow() as uow:
            flag = uow.exports.heartbeat(
                export.id,
                export.attempts,
                datetime.now(UTC),
                progress=round(self.progress, 4),
                message=self.message,
            )
            if flag is None:
                self.lost.set()
                return
            if flag:
                self.cancelled.set()
            now = time.monotonic()
            if now - self._last_event >= 1.0:
                uow.exports.add_event(
                    event(
                        export.id,
                        "progress",
                        progress=round(self.progress, 4),
                        message=self.message,
                    )
                )
                self._last_event = now
            uow.commit(durable=False)


def run_export(
    new_uow: Callable[[], UnitOfWork],
    datasets: ObjectStorage,
    results: ObjectStorage,
    loader: TableLoader,
    export_id: UUID,
    *,
    worker_id: str,
    workdir: Path,
    heartbeat_interval_s: float,
    max_attempts: int,
    is_transient: Callable[[BaseException], bool],
) -> str:
    """Claim a queued export, load it through a staging table, and end it exactly once."""
    uow = new_uow()
    with uow:
        export = uow.exports.claim(export_id, worker_id, datetime.now(UTC))
        if export is None:
            return Outcome.skipped  # a duplicate delivery, or cancelled
        uow.exports.add_event(
            event(export_id, "started", attempt=export.attempts, worker_id=worker_id)
        )
        uow.commit()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(
        tempfile.mkdtemp(prefix=f"job-export-{export_id}-", suffix=owner_suffix(), dir=workdir)
    )
    try:
        with _Beat(new_uow, export, heartbeat_interval_s) as beat:
            source = _download(uow, datasets, results, export, scratch)
            request = LoadRequest(
                export_id=export.id,
                attempt=export.attempts,
                destination=export.destination,
                table=export.table_name,
                mode=export.mode,
                source=source,
                owner_id=export.owner_id,
            )
            summary = loader.applied(request)  # an earlier attempt applied it, then died
            if summary is None:
                # The rows earlier attempts rejected stay until the end: a reaped attempt may
                # still be the one that applies (then its rows are the ones that count).
                summary = loader.load(
                    request,
                    progress=lambda done, total: _progress(beat, done, total),
                    rejected=lambda rows: _record_rejected(new_uow, export, rows),
                    should_stop=beat.should_stop,
                )
            if beat.lost.is_set():
                raise _Lost()
            return _complete(uow, export, summary, time.monotonic() - started)
    except LoadCancelled:
        if beat.lost.is_set():
            return Outcome.lost
        return _end(uow, export, ExportStatus.cancelled, reason="cancel requested")
    except _Lost:
        return Outcome.lost
    except DestinationError as exc:
        return _end(uow, export, ExportStatus.failed, error=_error(exc))
    except Exception as exc:
        transient = isinstance(exc, DestinationUnavailable) or is_transient(exc)
        if transient and export.attempts < max_attempts:
            log.warning("export %s attempt %d: %s", export_id, export.attempts, exc)
            return _requeue(uow, export, _error(exc))
        log.exception("export %s failed", export_id)
        return _end(uow, export, ExportStatus.failed, error=_error(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(
    uow: UnitOfWork, datasets: ObjectStorage, results: ObjectStorage, export: Export, folder: Path
) -> Path:
    """A local copy of the export's source (the owner's dataset or artifact, read as its owner)."""
    owner = Principal(owner_id=export.owner_id, scope=KeyScope.read)
    path = folder / "source"
    with uow:
        if export.dataset_id is not None:
            dataset = uow.datasets.get(export.dataset_id, owner)
            key = dataset.parquet_key if dataset is not None else None
        elif export.job_id is not None and export.artifact is not None:
            artifact = uow.artifacts.get(owner, export.job_id, export.artifact)
            key = artifact.storage_key if artifact is not None else None
        else:  # the job was deleted: the foreign key cleared job_id
            key = None
    if key is None:
        raise DestinationError("the source dataset/job was deleted before the export ran")
    (datasets if export.dataset_id is not None else results).download_file(key, path)
    return path


def _progress(beat: _Beat, done: int, total: int) -> None:
    beat.progress = done / total if total else 0.0
    beat.message = f"{done} of {total} rows"


def _record_rejected(
    new_uow: Callable[[], UnitOfWork], export: Export, rows: list[RejectedRow]
) -> None:
    with new_uow() as uow:
        uow.exports.add_failed_rows(
            ExportFailedRow(
                export_id=export.id,
                attempt=export.attempts,
                row_number=r.row_number,
                values=_json_safe(r.values),
                reason=r.reason,
            )
            for r in rows
        )
        uow.commit()


def _json_safe(value: Any) -> Any:
    """NaN and the infinities as text: PostgreSQL's JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _error(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}


def _complete(uow: UnitOfWork, export: Export, summary: LoadSummary, seconds: float) -> str:
    result = {
        "rows_loaded": summary.rows_loaded,
        "rows_failed": summary.rows_failed,
        "duration_s": round(seconds, 3),
        "destination": export.destination,
        "table": export.table_name,
        "mode": export.mode.value,
    }
    with uow:
        if not uow.exports.transition(
            export.id,
            [ExportStatus.running],
            ExportStatus.completed,
            attempt=export.attempts,
            result=result,
            rows_loaded=summary.rows_loaded,
            rows_failed=summary.rows_failed,
            progress=1.0,
            message="completed",
            finished_at=datetime.now(UTC),
        ):
            return Outcome.lost  # reaped meanwhile: the next attempt finds it applied
        # Only the rows of the attempt that applied the load describe the table.
        uow.exports.delete_failed_rows(export.id, keep_attempt=summary.attempt or export.attempts)
        uow.exports.add_event(event(export.id, "completed", **result))
        announce_export(uow, export.id)
        uow.commit()
    return Outcome.completed


def _end(uow: UnitOfWork, export: Export, status: ExportStatus, **payload: Any) -> str:
    with uow:
        changes = {"error": payload["error"]} if "error" in payload else {}
        if not uow.exports.transition(
            export.id,
            [ExportStatus.running],
            status,
            attempt=export.attempts,
            message=status.value,
            finished_at=datetime.now(UTC),
            **changes,
        ):
            return Outcome.lost
        uow.exports.add_event(event(export.id, status.value, **payload))
        announce_export(uow, export.id)
        uow.commit()
    return status.value


def _requeue(uow: UnitOfWork, export: Export, error: dict[str, Any]) -> str:
    with uow:
        if not uow.exports.transition(
            export.id,
            [ExportStatus.running],
            ExportStatus.queued,
            attempt=export.attempts,
            worker_id=None,
            message=f"retrying after: {error['message']}",
        ):
            return Outcome.lost
        uow.exports.add_event(event(export.id, "retried", attempt=export.attempts, error=error))
        uow.commit()
    return Outcome.retry
