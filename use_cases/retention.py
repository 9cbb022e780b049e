"""Retention: which finished jobs and unused datasets have expired, the sweep that deletes them
(records and objects together), and what each owner stores.

Never swept: a job that is not completed, failed or cancelled; a dataset being uploaded or
validated, or with a queued (possibly waiting) or running job. A swept dataset's finished jobs
stay, with their results (their dataset id becomes null, as after DELETE /datasets/{id}); they
expire on their own clock.

Records go first, and in the same transaction a pending deletion of their objects is written;
the objects are deleted after the commit and the pending row then removed. A crash in between
leaves objects without a record, never a record without its objects, and the next sweep
deletes them.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from pydantic import BaseModel

from ports.repositories import OwnerUsage, UnitOfWork
from ports.storage import ObjectNotFound, ObjectStorage
from schemas.domain.lifecycle import FINISHED_JOB_STATUSES
from schemas.domain.records import KeyScope, Principal
from schemas.settings import OwnerRetention, Settings

log = logging.getLogger(__name__)

# Items one sweep deletes at most: a large backlog goes over several passes, never blocking
# the recovery loop that runs the sweep.
SWEEP_LIMIT = 100

Kind = Literal["job", "dataset"]
BUCKETS = ("datasets", "results")


@dataclass(frozen=True)
class RetentionPolicy:
    """Days after which finished jobs and unused datasets go (None: kept), per owner."""

    job_days: int | None = None
    dataset_unused_days: int | None = None
    owners: dict[str, OwnerRetention] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetentionPolicy":
        return cls(
            settings.retention_job_days,
            settings.retention_dataset_unused_days,
            dict(settings.retention_owners),
        )

    def groups(self, kind: Kind) -> list[tuple[list[str] | None, list[str], int]]:
        """(owners, excluded owners, days) per rule: the deployment's for every owner without
        an override of this kind, then each override that keeps records for a limited time."""
        name = "job_days" if kind == "job" else "dataset_unused_days"
        overridden = sorted(o for o, r in self.owners.items() if name in r.model_fields_set)
        default = self.job_days if kind == "job" else self.dataset_unused_days
        rules: list[tuple[list[str] | None, list[str], int]] = []
        if default:
            rules.append((None, overridden, default))
        for owner in overridden:
            days = getattr(self.owners[owner], name)
            if days:  # null or 0: that owner's are kept
                rules.append(([owner], [], days))
        return rules

    @property
    def enabled(self) -> bool:
        return bool(self.groups("job") or self.groups("dataset"))


class RetentionItem(BaseModel):
    """One record the sweep deletes (or would), and why."""

    kind: Kind
    id: UUID
    owner_id: str
    name: str | None
    status: str
    bytes: int
    since: datetime  # a job's finish, a dataset's last use
    days: int
    reason: str


def list_expired(
    uow: UnitOfWork, policy: RetentionPolicy, now: datetime, *, limit: int = SWEEP_LIMIT
) -> list[RetentionItem]:
    """What the policy deletes now (at most `limit` items, jobs first): the dry run."""
    items: list[RetentionItem] = []
    with uow:
        for owners, exclude, days in policy.groups("job"):
            cutoff = now - timedelta(days=days)
            for expired in uow.retention.list_expired_jobs(
                cutoff, owners=owners, exclude_owners=exclude, limit=limit - len(items)
            ):
                job = expired.job
                assert job.finished_at is not None  # finished jobs have it
                items.append(
                    RetentionItem(
                        kind="job",
                        id=job.id,
                        owner_id=job.owner_id,
                        name=job.name,
                        status=job.status.value,
                        bytes=expired.artifact_bytes,
                        since=job.finished_at,
                        days=days,
                        reason=f"{job.status.value} more than {days} day(s) ago",
                    )
                )
        for owners, exclude, days in policy.groups("dataset"):
            cutoff = now - timedelta(days=days)
            for unused in uow.retention.list_unused_datasets(
                cutoff, owners=owners, exclude_owners=exclude, limit=limit - len(items)
            ):
                dataset = unused.dataset
                items.append(
                    RetentionItem(
                        kind="dataset",
                        id=dataset.id,
                        owner_id=dataset.owner_id,
                        name=dataset.name,
                        status=dataset.status.value,
                        bytes=dataset.size_bytes + unused.copy_bytes,
                        since=unused.last_used_at,
                        days=days,
                        reason=f"not used for more than {days} day(s)",
                    )
                )
    return items[:limit]


def sweep(
    uow: UnitOfWork,
    datasets_storage: ObjectStorage,
    results_storage: ObjectStorage,
    policy: RetentionPolicy,
    now: datetime,
    *,
    limit: int = SWEEP_LIMIT,
) -> int:
    """One bounded pass: finish pending object deletions, measure new typed copies, delete what
    expired (each record in its own transaction, then its objects); returns records deleted."""
    storages = dict(zip(BUCKETS, (datasets_storage, results_storage), strict=True))
    finish_pending_deletions(uow, storages, limit=limit)
    measure_copies(uow, datasets_storage, limit=limit)
    if not policy.enabled:
        return 0
    deleted = 0
    for item in list_expired(uow, policy, now, limit=limit):
        with uow:
            if item.kind == "job":
                gone = _delete_job(uow, item.id, now - timedelta(days=item.days))
                bucket, prefix = "results", f"jobs/{item.id}/"
            else:
                cutoff = now - timedelta(days=item.days)
                gone = uow.retention.delete_unused_dataset(item.id, cutoff)
                bucket, prefix = "datasets", f"datasets/{item.id}/"
            if not gone:  # used, or swept by another worker, since it was listed
                continue
            uow.retention.add_pending_deletion(bucket, prefix)
            uow.commit()
        deleted += 1
        log.info("retention deleted %s %s (%s)", item.kind, item.id, item.reason)
    finish_pending_deletions(uow, storages, limit=limit)
    return deleted


def _delete_job(uow: UnitOfWork, job_id: UUID, finished_before: datetime) -> bool:
    job = uow.jobs.get_for_worker(job_id)
    if job is None or job.status not in FINISHED_JOB_STATUSES:
        return False
    if job.finished_at is None or job.finished_at >= finished_before:
        return False
    uow.jobs.delete(job_id)  # with its events and artifact records
    return True


def finish_pending_deletions(
    uow: UnitOfWork, storages: dict[str, ObjectStorage], *, limit: int = SWEEP_LIMIT
) -> int:
    """Delete the objects of records already deleted; returns how many prefixes went."""
    with uow:
        pending = uow.retention.list_pending_deletions(limit)
    done = 0
    for deletion in pending:
        try:
            storages[deletion.bucket].delete_prefix(deletion.prefix)
        except Exception:  # storage down: the row stays for the next pass
            log.warning("could not delete objects under %s", deletion.prefix, exc_info=True)
            continue
        with uow:
            uow.retention.remove_pending_deletion(deletion.id)
            uow.commit()
        done += 1
    return done


def measure_copies(uow: UnitOfWork, storage: ObjectStorage, *, limit: int = SWEEP_LIMIT) -> int:
    """Record the size of typed copies written since the last pass (for usage figures)."""
    with uow:
        unmeasured = uow.retention.list_unmeasured_copies(limit)
    for dataset in unmeasured:
        assert dataset.parquet_key is not None  # the query asks for it
        try:
            size = storage.size(dataset.parquet_key)
        except ObjectNotFound:
            size = 0
        except Exception:
            log.warning("could not measure %s", dataset.parquet_key, exc_info=True)
            continue
        with uow:
            uow.retention.set_copy_bytes(dataset.id, size)
            uow.commit()
    return len(unmeasured)


def usage(uow: UnitOfWork, principal: Principal) -> OwnerUsage:
    """What the principal's owner stores: counts by status and bytes."""
    with uow:
        return uow.retention.usage(principal)


def usage_of_owners(uow: UnitOfWork, owners: Sequence[str] | None = None) -> list[OwnerUsage]:
    """What each owner stores (every owner with records when `owners` is None): for admins."""
    with uow:
        if owners is None:
            return uow.retention.usage_of_all_owners()
        return [uow.retention.usage(_acting_as(owner)) for owner in owners]


def _acting_as(owner_id: str) -> Principal:
    # An admin reading another owner's figures reads them as that owner would.
    return Principal(owner_id=owner_id, scope=KeyScope.read)
