"""SQL queries of the retention sweep and the usage figures, across owners."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update

from db.models import PendingObjectDeletionRow
from ports.repositories import ExpiredJob, OwnerUsage, PendingDeletion, UnusedDataset
from repositories.datasets import DATASETS, FAILED_ROWS, table_of
from repositories.exports import EXPORTS
from repositories.jobs import ARTIFACTS, JOBS
from repositories.schedules import SCHEDULES
from schemas.domain.lifecycle import FINISHED_JOB_STATUSES
from schemas.domain.records import (
    ACTIVE_JOB_STATUSES,
    Dataset,
    DatasetStatus,
    Job,
    Principal,
)

PENDING = table_of(PendingObjectDeletionRow)

_FINISHED = [s.value for s in FINISHED_JOB_STATUSES]
_ACTIVE = [s.value for s in ACTIVE_JOB_STATUSES]
# A dataset still uploaded or validating is on its way to being used: never swept.
_SETTLED = [DatasetStatus.ready.value, DatasetStatus.failed.value]


def _owner_filter(column: Any, owners: Sequence[str] | None, exclude: Sequence[str]) -> list[Any]:
    conditions = []
    if owners is not None:
        conditions.append(column.in_(list(owners)))
    if exclude:
        conditions.append(column.not_in(list(exclude)))
    return conditions


def _unused(unused_before: datetime) -> list[Any]:
    """A settled dataset untouched since the time, no job created on it since, none active.

    The job insert stamps last_used_at on the dataset row (SqlJobRepository.add): on
    PostgreSQL a DELETE waiting for that row re-checks these conditions on the new version.
    """
    active = exists().where(JOBS.c.dataset_id == DATASETS.c.id, JOBS.c.status.in_(_ACTIVE))
    loading = exists().where(EXPORTS.c.dataset_id == DATASETS.c.id, EXPORTS.c.status.in_(_ACTIVE))
    return [
        DATASETS.c.status.in_(_SETTLED),
        DATASETS.c.updated_at < unused_before,
        or_(DATASETS.c.last_used_at.is_(None), DATASETS.c.last_used_at < unused_before),
        ~active,
        ~loading,
    ]


def _scheduled(db: Connection) -> set[str]:
    """Datasets a schedule's action names (in JSON, read here: owners have a few schedules)."""
    actions = db.execute(select(SCHEDULES.c.action)).scalars()
    return {str(a.get("dataset_id")) for a in actions if a and a.get("dataset_id")}


class SqlRetentionRepository:
    """Retention reads and deletes over the datasets, jobs and pending_object_deletions tables."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def list_expired_jobs(
        self,
        finished_before: datetime,
        *,
        owners: Sequence[str] | None = None,
        exclude_owners: Sequence[str] = (),
        limit: int = 100,
    ) -> list[ExpiredJob]:
        """Completed, failed or cancelled jobs that finished before the time, oldest first."""
        artifact_bytes = (
            select(func.coalesce(func.sum(ARTIFACTS.c.size_bytes), 0))
            .where(ARTIFACTS.c.job_id == JOBS.c.id)
            .scalar_subquery()
        )
        query = (
            select(JOBS, artifact_bytes.label("_artifact_bytes"))
            .where(
                JOBS.c.status.in_(_FINISHED),
                JOBS.c.finished_at < finished_before,
                *_owner_filter(JOBS.c.owner_id, owners, exclude_owners),
            )
            .order_by(JOBS.c.finished_at, JOBS.c.id)
            .limit(limit)
        )
        return [
            ExpiredJob(job=Job.model_validate(row), artifact_bytes=int(row["_artifact_bytes"]))
            for row in self._db.execute(query).mappings()
        ]

    def list_unused_datasets(
        self,
        unused_before: datetime,
        *,
        owners: Sequence[str] | None = None,
        exclude_owners: Sequence[str] = (),
        limit: int = 100,
    ) -> list[UnusedDataset]:
        """Ready or failed datasets last used before the time, with no queued or running job."""
        query = (
            select(DATASETS)
            .where(
                *_unused(unused_before),
                *_owner_filter(DATASETS.c.owner_id, owners, exclude_owners),
            )
            .order_by(DATASETS.c.updated_at, DATASETS.c.id)
            .limit(limit)
        )
        found = []
        scheduled = _scheduled(self._db)
        for row in self._db.execute(query).mappings():
            if str(row["id"]) in scheduled:  # a schedule's next run needs it
                continue
            last_job = row["last_used_at"]
            updated = row["updated_at"]
            found.append(
                UnusedDataset(
                    dataset=Dataset.model_validate(row),
                    last_used_at=max(updated, last_job) if last_job is not None else updated,
                    copy_bytes=row["copy_bytes"] or 0,
                )
            )
        return found

    def delete_unused_dataset(self, dataset_id: UUID, unused_before: datetime) -> bool:
        """Delete the dataset (then its failed rows) only if it is still unused."""
        if str(dataset_id) in _scheduled(self._db):
            return False
        statement = delete(DATASETS).where(DATASETS.c.id == dataset_id, *_unused(unused_before))
        if self._db.execute(statement).rowcount != 1:
            return False
        # Explicit: SQLite honours ON DELETE CASCADE only with PRAGMA foreign_keys=ON.
        self._db.execute(delete(FAILED_ROWS).where(FAILED_ROWS.c.dataset_id == dataset_id))
        return True

    def list_unmeasured_copies(self, limit: int = 100) -> list[Dataset]:
        """Ready datasets whose typed copy has no recorded size yet."""
        query = (
            select(DATASETS)
            .where(
                DATASETS.c.status == DatasetStatus.ready.value,
                DATASETS.c.parquet_key.is_not(None),
                DATASETS.c.copy_bytes.is_(None),
            )
            .order_by(DATASETS.c.id)
            .limit(limit)
        )
        return [Dataset.model_validate(row) for row in self._db.execute(query).mappings()]

    def set_copy_bytes(self, dataset_id: UUID, size: int) -> None:
        """Record the size of a dataset's typed copy; updated_at stays (it is not a use)."""
        statement = (
            update(DATASETS)
            .where(DATASETS.c.id == dataset_id)
            .values(copy_bytes=size, updated_at=DATASETS.c.updated_at)  # not the onupdate
        )
        self._db.execute(statement)

    def add_pending_deletion(self, bucket: str, prefix: str) -> None:
        """Remember objects to delete, in the transaction that deletes their records."""
        self._db.execute(insert(PENDING).values(bucket=bucket, prefix=prefix))

    def list_pending_deletions(self, limit: int = 100) -> list[PendingDeletion]:
        """Pending deletions, oldest first."""
        query = select(PENDING).order_by(PENDING.c.id).limit(limit)
        return [PendingDeletion.model_validate(row) for row in self._db.execute(query).mappings()]

    def remove_pending_deletion(self, deletion_id: int) -> None:
        """Forget a pending deletion whose objects are gone."""
        self._db.execute(delete(PENDING).where(PENDING.c.id == deletion_id))

    def usage(self, principal: Principal) -> OwnerUsage:
        """What the principal's owner stores (zeros for an owner with nothing)."""
        found = self._usage([principal.owner_id])
        return found[0] if found else _empty(principal.owner_id)

    def usage_of_all_owners(self) -> list[OwnerUsage]:
        """What every owner with a dataset or a job stores, by owner id."""
        return self._usage(None)

    def _usage(self, owners: Sequence[str] | None) -> list[OwnerUsage]:
        by_owner: dict[str, dict[str, Any]] = {}

        def entry(owner_id: str) -> dict[str, Any]:
            return by_owner.setdefault(owner_id, _empty(owner_id).model_dump())

        datasets = select(
            DATASETS.c.owner_id,
            DATASETS.c.status,
            func.count(),
            func.coalesce(func.sum(DATASETS.c.size_bytes), 0),
            func.coalesce(func.sum(DATASETS.c.copy_bytes), 0),
        ).group_by(DATASETS.c.owner_id, DATASETS.c.status)
        jobs = select(JOBS.c.owner_id, JOBS.c.status, func.count()).group_by(
            JOBS.c.owner_id, JOBS.c.status
        )
        artifacts = (
            select(
                JOBS.c.owner_id,
                func.count(),
                func.coalesce(func.sum(ARTIFACTS.c.size_bytes), 0),
            )
            .join(JOBS, JOBS.c.id == ARTIFACTS.c.job_id)
            .group_by(JOBS.c.owner_id)
        )
        if owners is not None:
            datasets = datasets.where(and_(*_owner_filter(DATASETS.c.owner_id, owners, ())))
            jobs = jobs.where(and_(*_owner_filter(JOBS.c.owner_id, owners, ())))
            artifacts = artifacts.where(and_(*_owner_filter(JOBS.c.owner_id, owners, ())))
        for owner_id, status, count, size, copies in self._db.execute(datasets):
            totals = entry(owner_id)
            totals["datasets"][status] = count
            totals["dataset_bytes"] += int(size)
            totals["copy_bytes"] += int(copies)
        for owner_id, status, count in self._db.execute(jobs):
            entry(owner_id)["jobs"][status] = count
        for owner_id, count, size in self._db.execute(artifacts):
            totals = entry(owner_id)
            totals["artifacts"] = count
            totals["artifact_bytes"] = int(size)
        return [OwnerUsage.model_validate(by_owner[owner]) for owner in sorted(by_owner)]


def _empty(owner_id: str) -> OwnerUsage:
    return OwnerUsage(
        owner_id=owner_id,
        datasets={},
        jobs={},
        dataset_bytes=0,
        copy_bytes=0,
        artifacts=0,
        artifact_bytes=0,
    )
