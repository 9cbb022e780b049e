"""In-memory fakes of the ports, for unit tests of use cases and routes."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Self
from uuid import UUID

from ports.queue import QueueUnavailable
from ports.storage import ObjectNotFound
from schemas.records import (
    ACTIVE_JOB_STATUSES,
    Artifact,
    Dataset,
    DatasetStatus,
    FailedRow,
    Job,
    JobEvent,
)


class FakeDatasets:
    def __init__(self) -> None:
        self.rows: dict[UUID, Dataset] = {}

    def add(self, dataset: Dataset) -> None:
        self.rows[dataset.id] = dataset

    def get(self, dataset_id: UUID, owner_id: str | None = None) -> Dataset | None:
        dataset = self.rows.get(dataset_id)
        if dataset is None or (owner_id is not None and dataset.owner_id != owner_id):
            return None
        return dataset

    def list(self, owner_id: str, *, status=None, before=None, limit: int = 50) -> list[Dataset]:
        rows = sorted(self.rows.values(), key=lambda d: d.id, reverse=True)
        rows = [d for d in rows if d.owner_id == owner_id and (status is None or d.status == status)]
        rows = [d for d in rows if before is None or d.id < before]
        return rows[:limit]

    def update(self, dataset_id: UUID, **changes: Any) -> None:
        current = self.rows[dataset_id]
        self.rows[dataset_id] = current.model_copy(
            update={**changes, "updated_at": datetime.now(UTC)}
        )

    def transition(self, dataset_id, from_statuses: Sequence[DatasetStatus], to_status, **changes):
        current = self.rows.get(dataset_id)
        if current is None or current.status not in from_statuses:
            return False
        self.update(dataset_id, status=to_status, **changes)
        return True

    def list_stale(self, statuses, updated_before, limit: int = 100) -> list[Dataset]:
        return [
            d for d in self.rows.values() if d.status in statuses and d.updated_at < updated_before
        ][:limit]

    def delete(self, dataset_id: UUID) -> None:
        self.rows.pop(dataset_id, None)


class FakeFailedRows:
    def __init__(self) -> None:
        self.rows: list[FailedRow] = []

    def add_many(self, rows: Iterable[FailedRow]) -> int:
        new = list(rows)
        self.rows.extend(new)
        return len(new)

    def list(self, dataset_id: UUID, *, after_line: int = 0, limit: int = 100) -> list[FailedRow]:
        mine = [r for r in self.rows if r.dataset_id == dataset_id and r.line_number > after_line]
        return sorted(mine, key=lambda r: r.line_number)[:limit]

    def delete_for_dataset(self, dataset_id: UUID) -> None:
        self.rows = [r for r in self.rows if r.dataset_id != dataset_id]


class FakeJobs:
    def __init__(self) -> None:
        self.rows: dict[UUID, Job] = {}

    def add(self, job: Job) -> None:
        self.rows[job.id] = job

    def get(self, job_id: UUID, owner_id: str | None = None) -> Job | None:
        job = self.rows.get(job_id)
        return None if job is None or (owner_id and job.owner_id != owner_id) else job

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        return sum(
            1
            for j in self.rows.values()
            if j.dataset_id == dataset_id and j.status in ACTIVE_JOB_STATUSES
        )


class FakeJobEvents:
    def __init__(self) -> None:
        self.rows: list[JobEvent] = []

    def add(self, event: JobEvent) -> JobEvent:
        stored = event.model_copy(update={"id": len(self.rows) + 1})
        self.rows.append(stored)
        return stored

    def list_for_job(self, job_id: UUID, *, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
        return [e for e in self.rows if e.job_id == job_id and (e.id or 0) > after_id][:limit]


class FakeArtifacts:
    def __init__(self) -> None:
        self.rows: list[Artifact] = []

    def add(self, artifact: Artifact) -> None:
        self.rows.append(artifact)

    def list_for_job(self, job_id: UUID) -> list[Artifact]:
        return sorted((a for a in self.rows if a.job_id == job_id), key=lambda a: a.name)


class FakeUnitOfWork:
    """Shares its repositories across blocks; `committed` counts commits."""

    def __init__(self) -> None:
        self.datasets = FakeDatasets()
        self.failed_rows = FakeFailedRows()
        self.jobs = FakeJobs()
        self.job_events = FakeJobEvents()
        self.artifacts = FakeArtifacts()
        self.committed = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def commit(self) -> None:
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
        self.jobs: list[UUID] = []
        self.revoked: list[UUID] = []
        self.down = False

    def enqueue_dataset_validation(self, dataset_id: UUID) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
        self.validations.append(dataset_id)

    def enqueue_job(self, job_id: UUID) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
        self.jobs.append(job_id)

    def revoke_job(self, job_id: UUID) -> None:
        self.revoked.append(job_id)

    def check(self) -> None:
        if self.down:
            raise QueueUnavailable("broker down")
