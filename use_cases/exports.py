"""Export use cases: submit, cancel and run an export into a PostgreSQL destination, and
recover the exports whose worker went silent. The same engine rules as jobs: the database is
the truth, a claim is a compare-and-set, every terminal move is one."""

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from ports.queue import QueueUnavailable, TaskQueue
from ports.repositories import UnitOfWork
from schemas.domain.exports import (
    Export,
    ExportEvent,
    ExportMode,
    ExportStatus,
)
from schemas.domain.ids import new_id
from schemas.domain.records import DatasetStatus, JobStatus, Principal
from use_cases.errors import Conflict, InvalidInput, NotFound
from use_cases.webhooks import announce_export

log = logging.getLogger(__name__)

FINISHED = (ExportStatus.completed, ExportStatus.failed, ExportStatus.cancelled)
# PostgreSQL identifiers as written unquoted (they are quoted when used, so case is kept).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class ExportSource:
    """What to load: a dataset's typed copy, or an artifact of a completed job."""

    dataset_id: UUID | None = None
    job_id: UUID | None = None
    artifact: str | None = None


def check_table_name(table: str) -> str:
    """`name` or `schema.name`, each an identifier; InvalidInput naming the field otherwise."""
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise InvalidInput(
            f"table {table!r} is not a valid table name: use `name` or `schema.name`, each "
            "letters, digits and underscores, starting with a letter or underscore, at most "
            "63 characters",
            {"field": "table", "table": table},
        )
    if len(parts) == 2 and (
        parts[0].lower().startswith("pg_") or parts[0].lower() == "information_schema"
    ):
        raise InvalidInput(
            f"schema {parts[0]!r} is a system schema (pg_temp, pg_catalog, "
            "information_schema...); export into a schema of your own",
            {"field": "table", "table": table},
        )
    if parts[-1].startswith("assay_"):
        raise InvalidInput(
            "table names starting with assay_ are reserved for the loader's own tables",
            {"field": "table", "table": table},
        )
    return table


def event(export_id: UUID, type_: str, **payload: Any) -> ExportEvent:
    return ExportEvent(
        export_id=export_id, type=type_, payload=payload, created_at=datetime.now(UTC)
    )


def submit_export(
    uow: UnitOfWork,
    queue: TaskQueue,
    principal: Principal,
    source: ExportSource,
    destination: str,
    table: str,
    mode: ExportMode,
    *,
    destinations: Collection[str],
) -> Export:
    """Record a queued export of one of the principal's datasets (or a completed job's
    artifact) into `table` of a configured destination, then publish it. `destinations`: the
    configured names (TableLoader.destinations()). The entry point for schedules too."""
    if destination not in destinations:
        raise InvalidInput(
            f"unknown destination {destination!r}; configured: {sorted(destinations)}",
            {"field": "destination", "destination": destination},
        )
    check_table_name(table)
    with uow:
        _check_source(uow, principal, source)
        now = datetime.now(UTC)
        export = Export(
            id=new_id(),
            owner_id=principal.owner_id,
            dataset_id=source.dataset_id,
            job_id=source.job_id,
            artifact=source.artifact,
            destination=destination,
            table_name=table,
            mode=mode,
            status=ExportStatus.queued,
            message="queued",
            created_at=now,
            updated_at=now,
        )
        uow.exports.add(export)
        uow.exports.add_event(
            event(export.id, "created", destination=destination, table=table, mode=mode.value)
        )
        uow.commit()
    publish_export(uow, queue, export.id)
    return export


def _check_source(uow: UnitOfWork, principal: Principal, source: ExportSource) -> None:
    if (source.dataset_id is None) == (source.job_id is None):
        raise InvalidInput(
            "source needs either dataset_id, or job_id and artifact", {"field": "source"}
        )
    if source.dataset_id is not None:
        dataset = uow.datasets.get(source.dataset_id, principal)
        if dataset is None:
            raise NotFound(
                f"dataset {source.dataset_id} not found", {"dataset_id": str(source.dataset_id)}
            )
        if dataset.status != DatasetStatus.ready or not dataset.parquet_key:
            raise Conflict(
                f"dataset {dataset.id} is {dataset.status.value}; only a ready dataset "
                "can be exported",
                {"dataset_id": str(dataset.id), "status": dataset.status.value},
            )
        return
    assert source.job_id is not None
    job = uow.jobs.get(source.job_id, principal)
    if job is None:
        raise NotFound(f"job {source.job_id} not found", {"job_id": str(source.job_id)})
    if job.status != JobStatus.completed:
        raise Conflict(
            f"job {job.id} is {job.status.value}; its artifacts exist once it has completed",
            {"job_id": str(job.id), "status": job.status.value},
        )
    if not source.artifact or uow.artifacts.get(principal, job.id, source.artifact) is None:
        raise NotFound(
            f"job {job.id} has no artifact {source.artifact!r}",
            {"field": "source.artifact", "artifact": source.artifact},
        )


def publish_export(uow: UnitOfWork, queue: TaskQueue, export_id: UUID) -> bool:
    """Publish after commit; when the broker is down the reaper re-publishes later."""
    try:
        queue.enqueue_export(export_id)
    except QueueUnavailable as exc:
        log.warning("export %s not published yet: %s", export_id, exc)
        return False
    try:
        with uow:
            uow.exports.add_event(event(export_id, "enqueued"))
            uow.commit(durable=False)
    except Exception:  # published; a missing history line is not worth a 5xx
        log.warning("could not record that export %s was enqueued", export_id, exc_info=True)
    return True


def cancel_export(uow: UnitOfWork, export_id: UUID, principal: Principal) -> Export:
    """Cancel one of the principal's exports: a queued one at once, a running one stops at
    its next batch (its target untouched). Another owner's export is NotFound."""
    with uow:
        export = uow.exports.get(export_id, principal)
        if export is None:
            raise NotFound(f"export {export_id} not found", {"export_id": str(export_id)})
        if export.status in FINISHED or not uow.exports.request_cancel(export_id):
            raise Conflict(
                f"export {export_id} is already {export.status.value}",
                {"status": export.status.value},
            )
        uow.exports.add_event(event(export_id, "cancel_requested"))
        if uow.exports.transition(
            export_id,
            [ExportStatus.queued],
            ExportStatus.cancelled,
            message="cancelled before it started",
            finished_at=datetime.now(UTC),
        ):
            uow.exports.add_event(event(export_id, "cancelled", reason="before it started"))
        uow.commit()
        current = uow.exports.get(export_id, principal)
    assert current is not None
    return current


def recover_exports(
    uow: UnitOfWork,
    queue: TaskQueue,
    *,
    heartbeat_timeout_s: float,
    grace_s: float,
    max_attempts: int,
) -> int:
    """Requeue (or end) running exports whose worker went silent; re-publish unclaimed ones."""
    now = datetime.now(UTC)
    to_publish: list[UUID] = []
    acted = 0
    with uow:
        for export in uow.exports.list_stale_running(now - timedelta(seconds=heartbeat_timeout_s)):
            acted += 1
            silent = f"worker {export.worker_id} stopped sending heartbeats"
            running, attempt = [ExportStatus.running], export.attempts
            if export.cancel_requested:
                if uow.exports.transition(
                    export.id,
                    running,
                    ExportStatus.cancelled,
                    attempt=attempt,
                    message="cancelled",
                    finished_at=now,
                ):
                    uow.exports.add_event(event(export.id, "cancelled", reason=silent))
            elif attempt >= max_attempts:
                error = {"type": "WorkerLost", "message": f"{silent}; gave up after {attempt}"}
                if uow.exports.transition(
                    export.id,
                    running,
                    ExportStatus.failed,
                    attempt=attempt,
                    error=error,
                    message="failed",
                    finished_at=now,
                ):
                    uow.exports.add_event(event(export.id, "failed", error=error))
                    announce_export(uow, export.id)
            elif uow.exports.transition(
                export.id,
                running,
                ExportStatus.queued,
                attempt=attempt,
                worker_id=None,
                message=f"requeued: {silent}",
            ):
                uow.exports.add_event(event(export.id, "requeued", attempt=attempt, reason=silent))
                to_publish.append(export.id)
        for export in uow.exports.list_unclaimed_queued(now - timedelta(seconds=grace_s)):
            acted += 1
            if export.cancel_requested:  # asked to stop while it went back to the queue
                if uow.exports.transition(
                    export.id,
                    [ExportStatus.queued],
                    ExportStatus.cancelled,
                    message="cancelled",
                    finished_at=now,
                ):
                    uow.exports.add_event(event(export.id, "cancelled", reason="cancel requested"))
                continue
            uow.exports.touch(export.id)
            to_publish.append(export.id)
        uow.commit()
    for export_id in to_publish:
        publish_export(uow, queue, export_id)
    return acted
