"""Dataset use cases: register an upload, validate it in a worker, delete it, recover stuck ones.

Imports from a URL are use_cases/imports.py; they share the claim and the validation here.
"""

import functools
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from ports.queue import QueueUnavailable, TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from schemas.domain.ids import new_id
from schemas.domain.records import (
    ACTIVE_JOB_STATUSES,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    FailedRow,
    Principal,
)
from use_cases.errors import Conflict, NotFound
from use_cases.lifecycle import move_dataset

log = logging.getLogger(__name__)

FORMAT_EXTENSIONS = {
    DatasetFormat.csv: "csv",
    DatasetFormat.json: "json",
    DatasetFormat.ndjson: "ndjson",
    DatasetFormat.parquet: "parquet",
}


@dataclass(frozen=True)
class ReceivedFile:
    """An upload already spooled to a local file, with its size and sha256."""

    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class IngestLimits:
    """What converting one upload may take (ASSAY_WORKER_MEMORY_BUDGET_MB, ASSAY_MAX_ROWS)."""

    memory_limit: str | None = None  # DuckDB's while it converts; None: ingest's default
    # The conversion runs in a child process killed above this (None: in-process, unwatched).
    memory_budget_mb: int | None = None
    max_rows: int | None = None  # more rows fail the dataset, naming the limit


def original_key(dataset_id: UUID, fmt: DatasetFormat) -> str:
    return f"datasets/{dataset_id}/original.{FORMAT_EXTENSIONS[fmt]}"


def parquet_key(dataset_id: UUID) -> str:
    return f"datasets/{dataset_id}/data.parquet"


def preview_key(dataset_id: UUID) -> str:
    return f"datasets/{dataset_id}/preview.json"


def register_dataset(
    uow: UnitOfWork,
    storage: ObjectStorage,
    queue: TaskQueue,
    *,
    principal: Principal,
    name: str,
    fmt: DatasetFormat,
    received: ReceivedFile,
    null_values: list[str] | None = None,
) -> Dataset:
    """Store an uploaded file as the principal's dataset, record it as uploaded and ask a worker
    to validate it; `null_values` are its CSV null tokens (None: the default list)."""
    dataset_id = new_id()
    key = original_key(dataset_id, fmt)
    storage.put_file(key, received.path)
    now = datetime.now(UTC)
    dataset = Dataset(
        id=dataset_id,
        owner_id=principal.owner_id,
        name=name,
        format=fmt,
        status=DatasetStatus.uploaded,
        size_bytes=received.size_bytes,
        sha256=received.sha256,
        storage_key=key,
        null_values=null_values,
        created_at=now,
        updated_at=now,
    )
    try:
        with uow:
            uow.datasets.add(dataset)
            uow.commit()
    except Exception:
        storage.delete(key)
        raise
    publish_validation(queue, dataset_id)
    return dataset


def publish_validation(queue: TaskQueue, dataset_id: UUID) -> None:
    """Publish after commit; on failure the reaper re-publishes, so the upload is not lost."""
    try:
        queue.enqueue_dataset_validation(dataset_id)
    except QueueUnavailable as exc:
        log.warning("validation of %s not published yet: %s", dataset_id, exc)


def publish_import(queue: TaskQueue, dataset_id: UUID) -> None:
    """Publish after commit; on failure the reaper re-publishes, so the import is not lost."""
    try:
        queue.enqueue_dataset_import(dataset_id)
    except QueueUnavailable as exc:
        log.warning("import of %s not published yet: %s", dataset_id, exc)


def awaits_download(dataset: Dataset) -> bool:
    """An import whose file is not stored yet (its sha256 is set once it is)."""
    return dataset.source_url is not None and not dataset.sha256


def publish_next_step(queue: TaskQueue, dataset: Dataset) -> None:
    """Ask a worker for what an `uploaded` dataset needs: its download, or its validation."""
    if awaits_download(dataset):
        publish_import(queue, dataset.id)
    else:
        publish_validation(queue, dataset.id)


def validate_dataset(
    uow: UnitOfWork,
    storage: ObjectStorage,
    dataset_id: UUID,
    workdir: Path,
    *,
    final_attempt: bool = True,
    keep_alive: Callable[[], UnitOfWork] | None = None,
    limits: IngestLimits | None = None,
) -> DatasetStatus | None:
    """Infer the schema, write the typed Parquet copy and keep failed rows; None if already taken.

    An unexpected error (storage or database down) puts the dataset back to `uploaded` and
    propagates so that the caller retries; on the final attempt it fails the dataset instead.
    With `keep_alive` (a unit-of-work factory), `updated_at` is refreshed every few seconds, so
    the reaper can tell a long validation from one whose worker died. `limits` bound the
    conversion's memory and the dataset's rows (default: none but ingest's own).
    """

    def validate(dataset: Dataset, scratch: Path) -> DatasetStatus | None:
        if awaits_download(dataset):  # a stray message: the import task fetches it first
            with uow:
                move_dataset(uow, dataset.id, DatasetStatus.validating, DatasetStatus.uploaded)
                uow.commit()
            return None
        return validate_claimed(uow, storage, dataset, scratch, limits or IngestLimits())

    return run_claimed(
        uow,
        dataset_id,
        workdir,
        validate,
        what="validation",
        final_attempt=final_attempt,
        keep_alive=keep_alive,
    )


def run_claimed(
    uow: UnitOfWork,
    dataset_id: UUID,
    workdir: Path,
    work: Callable[[Dataset, Path], DatasetStatus | None],
    *,
    what: str,
    final_attempt: bool = True,
    keep_alive: Callable[[], UnitOfWork] | None = None,
) -> DatasetStatus | None:
    """Claim an uploaded dataset (uploaded -> validating) and run `work` on it with a scratch
    folder; None if another worker has it (or it was deleted).

    An unexpected error puts the dataset back to `uploaded` and propagates, for the caller to
    retry; on the final attempt it fails the dataset ("<what> could not complete: ...").
    """
    with uow:
        claimed = move_dataset(uow, dataset_id, DatasetStatus.uploaded, DatasetStatus.validating)
        uow.commit()
    if not claimed:
        return None
    with uow:
        dataset = uow.datasets.get_for_worker(dataset_id)
    if dataset is None:  # deleted while queued
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"validate-{dataset_id}-", dir=workdir))
    try:
        with _touching(keep_alive, dataset_id):
            return work(dataset, scratch)
    except Exception as exc:
        with uow:
            if final_attempt:
                move_dataset(
                    uow,
                    dataset_id,
                    DatasetStatus.validating,
                    DatasetStatus.failed,
                    error=f"{what} could not complete: {type(exc).__name__}: {exc}",
                )
            else:
                move_dataset(uow, dataset_id, DatasetStatus.validating, DatasetStatus.uploaded)
            uow.commit()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


KEEP_ALIVE_S = 5.0


@contextmanager
def _touching(new_uow: Callable[[], UnitOfWork] | None, dataset_id: UUID) -> Iterator[None]:
    """Refresh the dataset's updated_at from a thread while the block runs."""
    if new_uow is None:
        yield
        return
    stop = threading.Event()

    def touch() -> None:
        uow = new_uow()
        while not stop.wait(KEEP_ALIVE_S):
            try:
                with uow:
                    uow.datasets.update(dataset_id)
                    uow.commit()
            except Exception:  # the next beat retries; the reaper is generous
                log.warning("could not refresh dataset %s", dataset_id, exc_info=True)

    thread = threading.Thread(target=touch, name=f"validate-{dataset_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def validate_claimed(
    uow: UnitOfWork,
    storage: ObjectStorage,
    dataset: Dataset,
    scratch: Path,
    limits: IngestLimits,
    source: Path | None = None,
) -> DatasetStatus:
    """Validate a dataset this worker claimed (`validating`), from `source` when the original is
    already on local disk, else from storage; more than `limits.max_rows` rows fail it."""
    # Imported here: DuckDB and pyarrow are only needed where a worker validates.
    from services.processing.datasets.ingest import (
        MEMORY_LIMIT,
        DatasetUnusable,
        ingest,
        iter_failed_rows,
    )
    from services.processing.processors.base import MemoryBudgetExceeded
    from services.processing.sandbox import Ceiling, call_in_child

    if source is None:
        source = scratch / f"original.{FORMAT_EXTENSIONS[dataset.format]}"
        storage.download_file(dataset.storage_key, source)
    parquet_out = scratch / "data.parquet"
    convert = functools.partial(
        ingest,
        source,
        dataset.format,
        parquet_out,
        scratch,
        memory_limit=limits.memory_limit or MEMORY_LIMIT,
        max_rows=limits.max_rows,
        null_values=dataset.null_values,
    )
    try:
        if limits.memory_budget_mb is None:
            result = convert()
        else:  # a file nobody foresaw (one that inflates, say) cannot take the host down
            result = call_in_child(convert, Ceiling.for_budget(limits.memory_budget_mb))
    except (DatasetUnusable, MemoryBudgetExceeded) as exc:  # the same file: no retry helps
        with uow:
            move_dataset(
                uow, dataset.id, DatasetStatus.validating, DatasetStatus.failed, error=str(exc)
            )
            uow.commit()
        return DatasetStatus.failed

    storage.put_file(parquet_key(dataset.id), parquet_out)
    preview = scratch / "preview.json"
    preview.write_text(json.dumps(result.preview, default=str))
    storage.put_file(preview_key(dataset.id), preview, content_type="application/json")
    with uow:
        uow.failed_rows.delete_for_dataset(dataset.id)
        uow.commit()
    if result.failed_rows_path is not None:
        # A batch per transaction: SQLite's write lock is never held for long.
        for batch in iter_failed_rows(result.failed_rows_path):
            with uow:
                uow.failed_rows.add_many(
                    FailedRow(
                        dataset_id=dataset.id,
                        line_number=line,
                        raw_text=_text(raw),
                        reason=_text(reason),
                    )
                    for line, raw, reason in batch
                )
                uow.commit()
    with uow:
        done = move_dataset(
            uow,
            dataset.id,
            DatasetStatus.validating,
            DatasetStatus.ready,
            parquet_key=parquet_key(dataset.id),
            row_count=result.row_count,
            columns=[column.model_dump() for column in result.columns],
            failed_row_count=result.failed_row_count,
            error=None,
        )
        if done:
            uow.commit()
    return DatasetStatus.ready


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; show it the way a hex dump would.
    return value.replace("\x00", "\\x00")


def delete_dataset(
    uow: UnitOfWork, storage: ObjectStorage, dataset_id: UUID, principal: Principal
) -> None:
    """Delete one of the principal's datasets, its failed rows and its stored objects; refused
    while jobs or exports use it. Another owner's dataset is NotFound, like a missing one."""
    with uow:
        dataset = uow.datasets.get(dataset_id, principal)
        if dataset is None:
            raise NotFound(f"dataset {dataset_id} not found", {"dataset_id": str(dataset_id)})
        active = uow.jobs.count_active_for_dataset(dataset_id)
        if active:
            raise Conflict(
                f"dataset {dataset_id} is used by {active} active job(s); cancel them first",
                {
                    "dataset_id": str(dataset_id),
                    "active_jobs": active,
                    "statuses": [s.value for s in ACTIVE_JOB_STATUSES],
                },
            )
        exports = uow.exports.count_active_for_dataset(dataset_id)
        if exports:
            raise Conflict(
                f"dataset {dataset_id} is read by {exports} queued or running export(s); "
                "cancel them or wait for them to finish first",
                {"dataset_id": str(dataset_id), "active_exports": exports},
            )
        uow.datasets.delete(dataset_id)
        uow.commit()
    storage.delete_prefix(f"datasets/{dataset_id}/")


def recover_stuck_datasets(
    uow: UnitOfWork, queue: TaskQueue, *, grace_s: float, validating_timeout_s: float
) -> int:
    """Re-publish uploads nobody validated (imports nobody downloaded) and reset validations
    (and downloads) whose worker died."""
    now = datetime.now(UTC)
    with uow:
        stale_uploads = uow.datasets.list_stale(
            [DatasetStatus.uploaded], now - timedelta(seconds=grace_s)
        )
        stuck = uow.datasets.list_stale(
            [DatasetStatus.validating], now - timedelta(seconds=validating_timeout_s)
        )
        for dataset in stuck:
            move_dataset(uow, dataset.id, DatasetStatus.validating, DatasetStatus.uploaded)
        for dataset in stale_uploads:
            uow.datasets.update(dataset.id)  # touch: the next re-publish waits another grace period
        uow.commit()
    for dataset in [*stale_uploads, *stuck]:
        publish_next_step(queue, dataset)  # an import not downloaded yet goes to the import task
    return len(stale_uploads) + len(stuck)
