"""In-memory fakes of the ports, for unit tests of use cases and routes."""

from __future__ import annotations

import builtins
import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Self
from uuid import UUID

from ports.context import Context
from ports.fetcher import FetchedFile, FetchFailed, UrlRefused
from ports.queue import QueueUnavailable
from ports.repositories import IdempotencyConflict
from ports.storage import ObjectNotFound
from schemas.domain.lifecycle import check_dataset_transition, check_job_transition
from schemas.domain.records import (
    ACTIVE_JOB_STATUSES,
    ApiKey,
    Artifact,
    Dataset,
    DatasetStatus,
    FailedRow,
    Job,
    JobEvent,
    JobStatus,
    Principal,
)
from tests.fake_exports import FakeExports
from tests.fake_retention import FakeRetention
from tests.fake_schedules import FakeSchedules
from tests.fake_webhooks import FakeWebhookDeliveries, FakeWebhooks, FakeWebhookSender


class FakeDatasets:
    def __init__(self) -> None:
        self.rows: dict[UUID, Dataset] = {}
        # Columns the Dataset record does not carry (retention, tests/fake_retention.py).
        self.last_used_at: dict[UUID, datetime] = {}
        self.copy_bytes: dict[UUID, int] = {}

    def add(self, dataset: Dataset) -> None:
        self.rows[dataset.id] = dataset

    def get(self, dataset_id: UUID, principal: Principal) -> Dataset | None:
        dataset = self.rows.get(dataset_id)
        return dataset if dataset is not None and dataset.owner_id == principal.owner_id else None

    def get_for_worker(self, dataset_id: UUID) -> Dataset | None:
        return self.rows.get(dataset_id)

    def list(
        self, principal: Principal, *, status=None, before=None, limit: int = 50
    ) -> builtins.list[Dataset]:
        owner_id = principal.owner_id
        rows = sorted(self.rows.values(), key=lambda d: d.id, reverse=True)
        rows = [
            d for d in rows if d.owner_id == owner_id and (status is None or d.status == status)
        ]
        rows = [d for d in rows if before is None or d.id < before]
        return rows[:limit]

    def update(self, dataset_id: UUID, **changes: Any) -> None:
        if "status" in changes:
            raise ValueError("a dataset's status changes through transition (use_cases/lifecycle)")
        if dataset_id in self.rows:  # like an UPDATE that matches no row
            self._set(dataset_id, **changes)

    def transition(self, dataset_id, from_statuses: Sequence[DatasetStatus], to_status, **changes):
        check_dataset_transition(from_statuses, to_status)
        current = self.rows.get(dataset_id)
        if current is None or current.status not in from_statuses:
            return False
        self._set(dataset_id, status=to_status, **changes)
        return True

    def list_stale(self, statuses, updated_before, limit: int = 100) -> builtins.list[Dataset]:
        return [
            d for d in self.rows.values() if d.status in statuses and d.updated_at < updated_before
        ][:limit]

    def delete(self, dataset_id: UUID) -> None:
        self.rows.pop(dataset_id, None)

    def total_size_bytes(self, principal: Principal) -> int:
        return sum(d.size_bytes for d in self.rows.values() if d.owner_id == principal.owner_id)

    def count_by_status(self) -> dict[str, int]:
        return dict(Counter(d.status.value for d in self.rows.values()))

    def _set(self, dataset_id: UUID, **changes: Any) -> None:
        current = self.rows[dataset_id].model_dump()
        # Validate like a database round trip would: JSON columns come back as records.
        self.rows[dataset_id] = Dataset.model_validate(
            current | changes | {"updated_at": datetime.now(UTC)}
        )


class FakeFailedRows:
    """Failed rows, read through their dataset (`datasets`) like the SQL join does."""

    def __init__(self, datasets: FakeDatasets | None = None) -> None:
        self.rows: list[FailedRow] = []
        self.datasets = datasets if datasets is not None else FakeDatasets()

    def add_many(self, rows: Iterable[FailedRow]) -> int:
        new = list(rows)
        self.rows.extend(new)
        return len(new)

    def list(
        self, principal: Principal, dataset_id: UUID, *, after_line: int = 0, limit: int = 100
    ) -> builtins.list[FailedRow]:
        if self.datasets.get(dataset_id, principal) is None:
            return []
        mine = [r for r in self.rows if r.dataset_id == dataset_id and r.line_number > after_line]
        return sorted(mine, key=lambda r: r.line_number)[:limit]

    def delete_for_dataset(self, dataset_id: UUID) -> None:
        self.rows = [r for r in self.rows if r.dataset_id != dataset_id]


class FakeJobs:
    """Jobs in memory, with the SQL repository's compare-and-set semantics.

    `datasets` backs list_unclaimed_queued (a job counts only when its dataset is ready);
    `events` and `artifacts` are emptied of a job's rows by delete, and read their job's
    owner from here.
    """

    def __init__(
        self,
        datasets: FakeDatasets | None = None,
        events: FakeJobEvents | None = None,
        artifacts: FakeArtifacts | None = None,
    ) -> None:
        self.rows: dict[UUID, Job] = {}
        self.datasets = datasets if datasets is not None else FakeDatasets()
        self.events = events if events is not None else FakeJobEvents()
        self.artifacts = artifacts if artifacts is not None else FakeArtifacts()
        self.events.jobs = self.artifacts.jobs = self

    def add(self, job: Job) -> None:
        if job.id in self.rows:
            raise ValueError(f"duplicate job id {job.id}")
        if job.idempotency_key is not None and any(
            j.owner_id == job.owner_id and j.idempotency_key == job.idempotency_key
            for j in self.rows.values()
        ):
            raise IdempotencyConflict(
                f"owner {job.owner_id!r} already has a job with key {job.idempotency_key!r}"
            )
        self.rows[job.id] = job
        if job.dataset_id is not None:  # a job is a use of its dataset (retention)
            self.datasets.last_used_at[job.dataset_id] = job.created_at

    def get(self, job_id: UUID, principal: Principal) -> Job | None:
        job = self.rows.get(job_id)
        return job if job is not None and job.owner_id == principal.owner_id else None

    def get_for_worker(self, job_id: UUID) -> Job | None:
        return self.rows.get(job_id)

    def get_by_idempotency_key(self, principal: Principal, key: str) -> Job | None:
        owner_id = principal.owner_id
        return next(
            (j for j in self.rows.values() if j.owner_id == owner_id and j.idempotency_key == key),
            None,
        )

    def list(
        self,
        principal: Principal,
        *,
        status: JobStatus | None = None,
        dataset_id: UUID | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Job]:
        rows = [
            j
            for j in sorted(self.rows.values(), key=lambda j: j.id, reverse=True)
            if j.owner_id == principal.owner_id
            and (status is None or j.status == status)
            and (dataset_id is None or j.dataset_id == dataset_id)
            and (before is None or j.id < before)
        ]
        return rows[:limit]

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        return sum(
            1
            for j in self.rows.values()
            if j.dataset_id == dataset_id and j.status in ACTIVE_JOB_STATUSES
        )

    def list_queued_for_dataset(self, dataset_id: UUID) -> builtins.list[Job]:
        return sorted(
            (
                j
                for j in self.rows.values()
                if j.dataset_id == dataset_id and j.status == JobStatus.queued
            ),
            key=lambda j: j.id,
        )

    def claim(self, job_id: UUID, worker_id: str, now: datetime) -> Job | None:
        job = self.rows.get(job_id)
        if job is None or job.status != JobStatus.queued or job.cancel_requested:
            return None
        return self._set(
            job_id,
            status=JobStatus.running,
            attempts=job.attempts + 1,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=job.started_at or now,
            updated_at=now,
        )

    def heartbeat(
        self,
        job_id: UUID,
        attempt: int,
        now: datetime,
        *,
        progress: float | None = None,
        message: str | None = None,
        current_step: int | None = None,
    ) -> bool | None:
        job = self.rows.get(job_id)
        if job is None or job.status != JobStatus.running or job.attempts != attempt:
            return None
        optional = {"progress": progress, "message": message, "current_step": current_step}
        changes = {name: value for name, value in optional.items() if value is not None}
        return self._set(job_id, heartbeat_at=now, updated_at=now, **changes).cancel_requested

    def transition(
        self,
        job_id: UUID,
        from_statuses: Sequence[JobStatus],
        to_status: JobStatus,
        *,
        attempt: int | None = None,
        **changes: Any,
    ) -> bool:
        check_job_transition(from_statuses, to_status)
        job = self.rows.get(job_id)
        if job is None or job.status not in from_statuses:
            return False
        if attempt is not None and job.attempts != attempt:
            return False
        self._set(job_id, **{"updated_at": datetime.now(UTC), **changes, "status": to_status})
        return True

    def request_cancel(self, job_id: UUID) -> bool:
        job = self.rows.get(job_id)
        if job is None or job.status not in ACTIVE_JOB_STATUSES:
            return False
        self._set(job_id, cancel_requested=True, updated_at=datetime.now(UTC))
        return True

    def list_stale_running(
        self, heartbeat_before: datetime, limit: int = 100
    ) -> builtins.list[Job]:
        def last_seen(job: Job) -> datetime:
            return job.heartbeat_at or job.updated_at

        stale = [
            j
            for j in self.rows.values()
            if j.status == JobStatus.running and last_seen(j) < heartbeat_before
        ]
        return sorted(stale, key=lambda j: (last_seen(j), j.id))[:limit]

    def list_unclaimed_queued(
        self, updated_before: datetime, limit: int = 100
    ) -> builtins.list[Job]:
        def dataset_ready(job: Job) -> bool:
            dataset_id = job.dataset_id
            dataset = self.datasets.get_for_worker(dataset_id) if dataset_id is not None else None
            return dataset is not None and dataset.status == DatasetStatus.ready

        unclaimed = [
            j
            for j in self.rows.values()
            if j.status == JobStatus.queued and j.updated_at < updated_before and dataset_ready(j)
        ]
        return sorted(unclaimed, key=lambda j: (j.updated_at, j.id))[:limit]

    def touch(self, job_id: UUID, *, message: str | None = None) -> bool:
        job = self.rows.get(job_id)
        if job is None or job.status != JobStatus.queued:
            return False
        changes = {"message": message} if message is not None else {}
        self._set(job_id, updated_at=datetime.now(UTC), **changes)
        return True

    def delete(self, job_id: UUID) -> None:
        self.artifacts.rows = [a for a in self.artifacts.rows if a.job_id != job_id]
        self.events.rows = [e for e in self.events.rows if e.job_id != job_id]
        self.rows.pop(job_id, None)

    def count_by_status(self) -> dict[str, int]:
        return dict(Counter(j.status.value for j in self.rows.values()))

    def _set(self, job_id: UUID, **changes: Any) -> Job:
        unknown = set(changes) - set(Job.model_fields)
        if unknown:
            raise ValueError(f"jobs has no column {sorted(unknown)[0]!r}")
        # Validate like a row read back from the database (e.g. an error dict, a status string).
        job = Job.model_validate(self.rows[job_id].model_dump() | changes)
        self.rows[job_id] = job
        return job


class FakeJobEvents:
    """Events, read through their job (`jobs`, set by FakeJobs) like the SQL join does."""

    def __init__(self) -> None:
        self.rows: list[JobEvent] = []
        self.jobs: FakeJobs | None = None
        self._last_id = 0

    def add(self, event: JobEvent) -> JobEvent:
        self._last_id += 1  # never reused, even after a job's events were deleted
        stored = event.model_copy(update={"id": self._last_id})
        self.rows.append(stored)
        return stored

    def add_many(self, events: list[JobEvent]) -> None:
        for event in events:
            self.add(event)

    def list_for_job(
        self, principal: Principal, job_id: UUID, *, after_id: int = 0, limit: int = 1000
    ) -> list[JobEvent]:
        if not _owns_job(self.jobs, principal, job_id):
            return []
        return [e for e in self.rows if e.job_id == job_id and (e.id or 0) > after_id][:limit]


class FakeArtifacts:
    """Artifacts, read through their job (`jobs`, set by FakeJobs) like the SQL join does."""

    def __init__(self) -> None:
        self.rows: list[Artifact] = []
        self.jobs: FakeJobs | None = None

    def add(self, artifact: Artifact) -> None:
        if any(a.job_id == artifact.job_id and a.name == artifact.name for a in self.rows):
            # UNIQUE (job_id, name)
            raise ValueError(f"job {artifact.job_id} already has an artifact {artifact.name!r}")
        self.rows.append(artifact)

    def list_for_job(self, principal: Principal, job_id: UUID) -> list[Artifact]:
        if not _owns_job(self.jobs, principal, job_id):
            return []
        return sorted((a for a in self.rows if a.job_id == job_id), key=lambda a: a.name)

    def get(self, principal: Principal, job_id: UUID, name: str) -> Artifact | None:
        if not _owns_job(self.jobs, principal, job_id):
            return None
        return next((a for a in self.rows if a.job_id == job_id and a.name == name), None)


def _owns_job(jobs: FakeJobs | None, principal: Principal, job_id: UUID) -> bool:
    return jobs is not None and jobs.get(job_id, principal) is not None


class FakeApiKeyRepository:
    def __init__(self) -> None:
        self.rows: dict[UUID, ApiKey] = {}

    def add(self, key: ApiKey) -> None:
        if key.id in self.rows or any(k.secret_hash == key.secret_hash for k in self.rows.values()):
            raise ValueError(f"duplicate key {key.id}")  # PRIMARY KEY, UNIQUE (secret_hash)
        self.rows[key.id] = key

    def find_by_hash_for_authentication(self, secret_hash: str) -> ApiKey | None:
        return next((k for k in self.rows.values() if k.secret_hash == secret_hash), None)

    def get(self, key_id: UUID) -> ApiKey | None:
        return self.rows.get(key_id)

    def list_all(
        self, owner_id: str | None = None, *, after: UUID | None = None, limit: int | None = None
    ) -> list[ApiKey]:
        keys = [k for k in self.rows.values() if owner_id is None or k.owner_id == owner_id]
        ordered = sorted(keys, key=lambda k: (k.created_at, k.id))
        if after is not None:
            last = self.rows.get(after)
            ordered = [
                k
                for k in ordered
                if last is not None and (k.created_at, k.id) > (last.created_at, after)
            ]
        return ordered if limit is None else ordered[:limit]

    def revoke(self, key_id: UUID, when: datetime) -> bool:
        key = self.rows.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self.rows[key_id] = key.model_copy(update={"revoked_at": when})
        return True

    def mark_used(self, key_id: UUID, when: datetime) -> None:
        key = self.rows.get(key_id)
        if key is not None:
            self.rows[key_id] = key.model_copy(update={"last_used_at": when})


class FakeUnitOfWork:
    """Shares its repositories across blocks; `committed` counts commits."""

    def __init__(self) -> None:
        self.datasets = FakeDatasets()
        self.failed_rows = FakeFailedRows(self.datasets)
        self.job_events = FakeJobEvents()
        self.artifacts = FakeArtifacts()
        self.jobs = FakeJobs(self.datasets, self.job_events, self.artifacts)
        self.api_keys = FakeApiKeyRepository()
        self.retention = FakeRetention(self)
        self.schedules = FakeSchedules(self)
        self.exports = FakeExports()
        self.webhooks = FakeWebhooks()
        self.webhook_deliveries = FakeWebhookDeliveries()
        self.committed = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def commit(self, *, durable: bool = True) -> None:
        self.committed += 1

    def rollback(self) -> None:
        pass

    def check(self) -> None:
        pass


class FakeStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        self.objects[key] = Path(path).read_bytes()

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None:
        self.objects[key] = stream.read()

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        if key not in self.objects:
            raise ObjectNotFound(key)
        data = io.BytesIO(self.objects[key])
        return iter(lambda: data.read(chunk_size), b"")

    def download_file(self, key: str, path: Path) -> None:
        if key not in self.objects:
            raise ObjectNotFound(key)
        Path(path).write_bytes(self.objects[key])

    def size(self, key: str) -> int:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return len(self.objects[key])

    def exists(self, key: str) -> bool:
        return key in self.objects

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in self.objects if k.startswith(prefix)]:
            del self.objects[key]

    def presigned_url(self, key: str, expires_s: int = 3600, filename: str | None = None) -> None:
        return None

    def check(self) -> None:
        pass

    def ensure_ready(self) -> None:
        pass


class FakeQueue:
    def __init__(self) -> None:
        self.validations: list[UUID] = []
        self.imports: list[UUID] = []
        self.jobs: list[UUID] = []
        self.revoked: list[UUID] = []
        self.exports: list[UUID] = []
        self.down = False

    def enqueue_dataset_validation(self, dataset_id: UUID) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
        self.validations.append(dataset_id)

    def enqueue_dataset_import(self, dataset_id: UUID) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
        self.imports.append(dataset_id)

    def enqueue_job(self, job_id: UUID) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
        self.jobs.append(job_id)

    def enqueue_export(self, export_id: UUID) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
        self.exports.append(export_id)

    def revoke_job(self, job_id: UUID) -> None:
        self.revoked.append(job_id)

    def check(self) -> None:
        if self.down:
            raise QueueUnavailable("broker down")


class FakeFetcher:
    """Serves `files` (URL -> bytes) without a network; anything else answers 404.

    Refuses what is not http(s) and the URLs in `refused` (URL -> reason) like the real
    check; the URLs in `failures` (URL -> reason) fail while downloading.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.refused: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.fetched: list[str] = []

    def check(self, url: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise UrlRefused("only http and https URLs can be imported")
        if url in self.refused:
            raise UrlRefused(self.refused[url])

    def fetch(
        self,
        url: str,
        destination: Path,
        *,
        max_bytes: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> FetchedFile:
        self.fetched.append(url)
        self.check(url)
        if url in self.failures:
            raise FetchFailed(self.failures[url])
        if url not in self.files:
            raise FetchFailed("the server answered 404 Not Found")
        data = self.files[url]
        if len(data) > max_bytes:
            raise FetchFailed(f"the file is over the import limit of {max_bytes} bytes")
        Path(destination).write_bytes(data)
        if on_progress is not None:
            on_progress(len(data))
        return FetchedFile(
            path=Path(destination),
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            final_url=url,
        )


@dataclass(frozen=True)
class FakeContext(Context):
    """A Context over the fakes above, typed as such so that tests can inspect them."""

    new_uow: Callable[[], FakeUnitOfWork]
    datasets_storage: FakeStorage
    results_storage: FakeStorage
    queue: FakeQueue
    fetcher: FakeFetcher = field(default_factory=FakeFetcher)
    webhook_sender: FakeWebhookSender = field(default_factory=FakeWebhookSender)
