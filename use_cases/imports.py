"""Import a dataset from a URL: checked when submitted, downloaded and validated by a worker.

Submit: the URL's scheme and the addresses of its host are checked (`check_import_url`, a
refusal is a 422 naming `url`), then the dataset is recorded `uploaded` with its `source_url`,
an empty sha256 and no bytes, and the import task is published after commit.

Worker (`import_dataset`): one claim (uploaded -> validating, as for an upload) covers the
download and the validation. The file is downloaded into the scratch folder through the
UrlFetcher port, which checks every connection again (a redirect, or a DNS answer that changed
since the submit); `size_bytes` follows the bytes received, about once a second. The finished
file is stored as the dataset's original, its size and sha256 recorded, and validated from the
local copy. A refusal or failure found while downloading (redirect to a refused address, over
the size limit, timeout, HTTP error status) fails the dataset with the reason in `error`, and
nothing of it stays in storage. Anything else (storage or database down) is retried like a
validation; a retry after the file was stored only validates.
"""

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from ports.fetcher import FetchFailed, UrlFetcher, UrlRefused
from ports.queue import TaskQueue
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from schemas.domain.ids import new_id
from schemas.domain.records import Dataset, DatasetFormat, DatasetStatus, KeyScope, Principal
from use_cases.datasets import (
    FORMAT_EXTENSIONS,
    IngestLimits,
    awaits_download,
    original_key,
    publish_import,
    run_claimed,
    validate_claimed,
)
from use_cases.errors import InvalidParams
from use_cases.lifecycle import move_dataset

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


def check_import_url(fetcher: UrlFetcher, url: str) -> None:
    """InvalidParams (422, naming `url`) unless the URL is http(s) and its host resolves to an
    address imports may reach. Resolves the host: call it off the event loop."""
    try:
        fetcher.check(url)
    except UrlRefused as exc:
        raise InvalidParams(
            f"url refused: {exc}", {"field": "url", "url": url, "reason": str(exc)}
        ) from None


def submit_import(
    uow: UnitOfWork,
    queue: TaskQueue,
    *,
    principal: Principal,
    url: str,
    name: str,
    fmt: DatasetFormat,
    null_values: list[str] | None = None,
) -> Dataset:
    """Record the principal's dataset to import from `url` (checked by check_import_url) and ask
    a worker to download it; `null_values` are its CSV null tokens (None: the default list)."""
    dataset_id = new_id()
    now = datetime.now(UTC)
    dataset = Dataset(
        id=dataset_id,
        owner_id=principal.owner_id,
        name=name,
        format=fmt,
        status=DatasetStatus.uploaded,
        size_bytes=0,
        sha256="",
        storage_key=original_key(dataset_id, fmt),
        source_url=url,
        null_values=null_values,
        created_at=now,
        updated_at=now,
    )
    with uow:
        uow.datasets.add(dataset)
        uow.commit()
    publish_import(queue, dataset_id)
    return dataset


def import_dataset(
    uow: UnitOfWork,
    storage: ObjectStorage,
    fetcher: UrlFetcher,
    dataset_id: UUID,
    workdir: Path,
    *,
    max_bytes: int,
    quota_bytes: int = 0,
    final_attempt: bool = True,
    keep_alive: Callable[[], UnitOfWork] | None = None,
    limits: IngestLimits | None = None,
) -> DatasetStatus | None:
    """Download an imported dataset, store it as its original and validate it; None if another
    worker has it. `max_bytes` is the upload limit, `quota_bytes` the owner's storage quota
    (0: none); see validate_dataset for the rest."""

    def download_and_validate(dataset: Dataset, scratch: Path) -> DatasetStatus | None:
        source = None
        if awaits_download(dataset):
            source = scratch / f"original.{FORMAT_EXTENSIONS[dataset.format]}"
            limit = min(max_bytes, _room_left(uow, dataset, quota_bytes))
            stored = _download(uow, storage, fetcher, dataset, source, limit)
            if stored is None:
                return None  # deleted meanwhile
            if stored.status == DatasetStatus.failed:
                return DatasetStatus.failed
            dataset = stored
        return validate_claimed(uow, storage, dataset, scratch, limits or IngestLimits(), source)

    return run_claimed(
        uow,
        dataset_id,
        workdir,
        download_and_validate,
        what="import",
        final_attempt=final_attempt,
        keep_alive=keep_alive,
    )


def _room_left(uow: UnitOfWork, dataset: Dataset, quota_bytes: int) -> int:
    """Bytes the owner's quota leaves for this import (its own partial size not counted)."""
    if quota_bytes <= 0:
        return 2**63 - 1
    owner = Principal(owner_id=dataset.owner_id, scope=KeyScope.read)  # the owner's own rights
    with uow:
        used = uow.datasets.total_size_bytes(owner) - dataset.size_bytes
    return max(quota_bytes - used, 0)


def _download(
    uow: UnitOfWork,
    storage: ObjectStorage,
    fetcher: UrlFetcher,
    dataset: Dataset,
    target: Path,
    max_bytes: int,
) -> Dataset | None:
    """The dataset with its original stored, the failed dataset, or None if it was deleted."""
    assert dataset.source_url is not None
    key = dataset.storage_key
    try:
        fetched = fetcher.fetch(
            dataset.source_url,
            target,
            max_bytes=max_bytes,
            on_progress=_Progress(uow, dataset.id),
        )
    except FetchFailed as exc:
        storage.delete(key)  # in case an earlier attempt stored it and died before recording
        error = f"import from {dataset.source_url} failed: {exc}"
        with uow:
            move_dataset(
                uow,
                dataset.id,
                DatasetStatus.validating,
                DatasetStatus.failed,
                error=error,
                size_bytes=0,
            )
            uow.commit()
        log.info("dataset %s: %s", dataset.id, error)
        return dataset.model_copy(update={"status": DatasetStatus.failed, "error": error})
    try:
        storage.put_file(key, fetched.path)
    except Exception:
        _delete_quietly(storage, key)  # nothing half-written stays
        raise
    with uow:
        uow.datasets.update(dataset.id, size_bytes=fetched.size_bytes, sha256=fetched.sha256)
        current = uow.datasets.get_for_worker(dataset.id)
        uow.commit()
    if current is None:  # deleted while it downloaded: its objects go too
        storage.delete_prefix(f"datasets/{dataset.id}/")
        return None
    return current


def _delete_quietly(storage: ObjectStorage, key: str) -> None:
    try:
        storage.delete(key)
    except Exception:  # the error being handled is the one worth reporting
        log.warning("could not delete %s after a failed import", key, exc_info=True)


class _Progress:
    """Records the bytes received so far as the dataset's size, at most once a second."""

    def __init__(self, uow: UnitOfWork, dataset_id: UUID) -> None:
        self._uow = uow
        self._dataset_id = dataset_id
        self._last = time.monotonic()

    def __call__(self, received: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        try:
            with self._uow:
                self._uow.datasets.update(self._dataset_id, size_bytes=received)
                self._uow.commit()
        except Exception:  # progress is a courtesy: the download goes on
            log.warning("could not record progress of %s", self._dataset_id, exc_info=True)
