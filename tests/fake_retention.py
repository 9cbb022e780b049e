"""In-memory fake of the retention repository, over the fakes of tests/fakes.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from ports.repositories import ExpiredJob, OwnerUsage, PendingDeletion, UnusedDataset
from schemas.domain.lifecycle import FINISHED_JOB_STATUSES
from schemas.domain.records import ACTIVE_JOB_STATUSES, Dataset, DatasetStatus, Principal

if TYPE_CHECKING:
    from tests.fakes import FakeUnitOfWork

SETTLED = (DatasetStatus.ready, DatasetStatus.failed)


def _selected(owner_id: str, owners: Sequence[str] | None, exclude: Sequence[str]) -> bool:
    return (owners is None or owner_id in owners) and owner_id not in exclude


class FakeRetention:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self.uow = uow
        self.pending: dict[int, PendingDeletion] = {}
        self._last_id = 0

    def list_expired_jobs(
        self,
        finished_before: datetime,
        *,
        owners: Sequence[str] | None = None,
        exclude_owners: Sequence[str] = (),
        limit: int = 100,
    ) -> list[ExpiredJob]:
        jobs = [
            j
            for j in self.uow.jobs.rows.values()
            if j.status in FINISHED_JOB_STATUSES
            and j.finished_at is not None
            and j.finished_at < finished_before
            and _selected(j.owner_id, owners, exclude_owners)
        ]
        jobs.sort(key=lambda j: (j.finished_at, j.id))
        return [ExpiredJob(job=j, artifact_bytes=self._artifact_bytes(j.id)) for j in jobs][:limit]

    def list_unused_datasets(
        self,
        unused_before: datetime,
        *,
        owners: Sequence[str] | None = None,
        exclude_owners: Sequence[str] = (),
        limit: int = 100,
    ) -> list[UnusedDataset]:
        found = [
            d
            for d in self.uow.datasets.rows.values()
            if self._unused(d, unused_before) and _selected(d.owner_id, owners, exclude_owners)
        ]
        found.sort(key=lambda d: (d.updated_at, d.id))
        return [
            UnusedDataset(
                dataset=d,
                last_used_at=max(d.updated_at, self._last_job(d.id) or d.updated_at),
                copy_bytes=self.uow.datasets.copy_bytes.get(d.id, 0),
            )
            for d in found
        ][:limit]

    def delete_unused_dataset(self, dataset_id: UUID, unused_before: datetime) -> bool:
        dataset = self.uow.datasets.rows.get(dataset_id)
        if dataset is None or not self._unused(dataset, unused_before):
            return False
        self.uow.datasets.delete(dataset_id)
        self.uow.failed_rows.delete_for_dataset(dataset_id)
        return True

    def list_unmeasured_copies(self, limit: int = 100) -> list[Dataset]:
        return [
            d
            for d in self.uow.datasets.rows.values()
            if d.status == DatasetStatus.ready
            and d.parquet_key is not None
            and d.id not in self.uow.datasets.copy_bytes
        ][:limit]

    def set_copy_bytes(self, dataset_id: UUID, size: int) -> None:
        self.uow.datasets.copy_bytes[dataset_id] = size

    def add_pending_deletion(self, bucket: str, prefix: str) -> None:
        self._last_id += 1
        self.pending[self._last_id] = PendingDeletion(
            id=self._last_id, bucket=bucket, prefix=prefix
        )

    def list_pending_deletions(self, limit: int = 100) -> list[PendingDeletion]:
        return [self.pending[i] for i in sorted(self.pending)][:limit]

    def remove_pending_deletion(self, deletion_id: int) -> None:
        self.pending.pop(deletion_id, None)

    def usage(self, principal: Principal) -> OwnerUsage:
        return self._usage(principal.owner_id)

    def usage_of_all_owners(self) -> list[OwnerUsage]:
        owners = {d.owner_id for d in self.uow.datasets.rows.values()}
        owners |= {j.owner_id for j in self.uow.jobs.rows.values()}
        return [self._usage(owner) for owner in sorted(owners)]

    def _usage(self, owner_id: str) -> OwnerUsage:
        datasets = [d for d in self.uow.datasets.rows.values() if d.owner_id == owner_id]
        jobs = [j for j in self.uow.jobs.rows.values() if j.owner_id == owner_id]
        job_ids = {j.id for j in jobs}
        artifacts = [a for a in self.uow.artifacts.rows if a.job_id in job_ids]
        return OwnerUsage(
            owner_id=owner_id,
            datasets=dict(Counter(d.status.value for d in datasets)),
            jobs=dict(Counter(j.status.value for j in jobs)),
            dataset_bytes=sum(d.size_bytes for d in datasets),
            copy_bytes=sum(self.uow.datasets.copy_bytes.get(d.id, 0) for d in datasets),
            artifacts=len(artifacts),
            artifact_bytes=sum(a.size_bytes for a in artifacts),
        )

    def _unused(self, dataset: Dataset, unused_before: datetime) -> bool:
        last_job = self._last_job(dataset.id)
        active = any(
            j.dataset_id == dataset.id and j.status in ACTIVE_JOB_STATUSES
            for j in self.uow.jobs.rows.values()
        )
        return (
            dataset.status in SETTLED
            and dataset.updated_at < unused_before
            and (last_job is None or last_job < unused_before)
            and not active
        )

    def _last_job(self, dataset_id: UUID) -> datetime | None:
        return self.uow.datasets.last_used_at.get(dataset_id)

    def _artifact_bytes(self, job_id: UUID) -> int:
        return sum(a.size_bytes for a in self.uow.artifacts.rows if a.job_id == job_id)
