"""The retention repository and the sweep on SQLite and PostgreSQL (the `uow` fixture), with
objects in local files."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ports.repositories import UnitOfWork
from schemas.domain.records import (
    Artifact,
    Dataset,
    DatasetStatus,
    FailedRow,
    Job,
    JobStatus,
    KeyScope,
    Principal,
)
from services.adapters.storage.local import LocalObjectStorage
from tests.integration.test_repositories_contract import add_dataset, add_job
from use_cases.retention import RetentionPolicy, list_expired, sweep, usage

ALICE = Principal(owner_id="alice", scope=KeyScope.read)


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def old_dataset(uow: UnitOfWork, age: float = 40, **overrides: Any) -> Dataset:
    values: dict[str, Any] = {"status": DatasetStatus.ready, "updated_at": days_ago(age)}
    return add_dataset(uow, created_at=days_ago(age), **(values | overrides))


def finished_job(uow: UnitOfWork, dataset: Dataset | None, age: float = 40, **kw: Any) -> Job:
    values: dict[str, Any] = {
        "status": JobStatus.completed,
        "created_at": days_ago(age + 1),
        "updated_at": days_ago(age),
        "finished_at": days_ago(age),
    }
    return add_job(uow, dataset.id if dataset else None, **(values | kw))


def add_artifact(uow: UnitOfWork, job: Job, name: str, size: int) -> None:
    with uow:
        uow.artifacts.add(
            Artifact(
                job_id=job.id,
                name=name,
                content_type="text/csv",
                size_bytes=size,
                sha256="0" * 64,
                storage_key=f"jobs/{job.id}/attempt-1/{name}",
                created_at=days_ago(1),
            )
        )
        uow.commit()


def test_unused_datasets_are_settled_idle_and_without_active_jobs(uow: UnitOfWork) -> None:
    idle = old_dataset(uow)
    failed = old_dataset(uow, status=DatasetStatus.failed)
    old_dataset(uow, status=DatasetStatus.validating)
    old_dataset(uow, age=5)  # validated 5 days ago
    used = old_dataset(uow)
    finished_job(uow, used, age=4)  # created 5 days ago: a use
    busy = old_dataset(uow)
    add_job(uow, busy.id, status=JobStatus.queued, created_at=days_ago(40))
    bobs = old_dataset(uow, owner_id="bob")
    with uow:
        found = uow.retention.list_unused_datasets(days_ago(30))
        assert {u.dataset.id for u in found} == {idle.id, failed.id, bobs.id}
        assert all(abs(u.last_used_at - days_ago(40)) < timedelta(minutes=1) for u in found)
        only_alice = uow.retention.list_unused_datasets(days_ago(30), exclude_owners=["bob"])
        assert {u.dataset.id for u in only_alice} == {idle.id, failed.id}
        only_bob = uow.retention.list_unused_datasets(days_ago(30), owners=["bob"], limit=5)
        assert [u.dataset.id for u in only_bob] == [bobs.id]
        assert len(uow.retention.list_unused_datasets(days_ago(30), limit=2)) == 2


def test_deleting_an_unused_dataset_rechecks_that_it_is_unused(uow: UnitOfWork) -> None:
    dataset = old_dataset(uow)
    gone = old_dataset(uow)
    with uow:
        uow.failed_rows.add_many(
            [FailedRow(dataset_id=gone.id, line_number=2, raw_text="x", reason="bad")]
        )
        uow.commit()
    add_job(uow, dataset.id, status=JobStatus.queued)  # used since it was listed
    with uow:
        assert not uow.retention.delete_unused_dataset(dataset.id, days_ago(30))
        assert uow.retention.delete_unused_dataset(gone.id, days_ago(30))
        uow.commit()
    with uow:
        assert uow.datasets.get_for_worker(dataset.id) is not None
        assert uow.datasets.get_for_worker(gone.id) is None
        assert uow.failed_rows.list(ALICE, gone.id) == []


def test_expired_jobs_are_finished_before_the_time_with_their_artifact_bytes(
    uow: UnitOfWork,
) -> None:
    oldest = finished_job(uow, None, age=50, status=JobStatus.failed)
    old = finished_job(uow, None, age=40)
    add_artifact(uow, old, "a.csv", 300)
    add_artifact(uow, old, "b.csv", 45)
    finished_job(uow, None, age=10)
    add_job(uow, None, status=JobStatus.running, created_at=days_ago(60))
    bobs = finished_job(uow, None, age=40, owner_id="bob", status=JobStatus.cancelled)
    with uow:
        expired = uow.retention.list_expired_jobs(days_ago(30))
        assert [e.job.id for e in expired] == [oldest.id, old.id, bobs.id]
        assert [e.artifact_bytes for e in expired] == [0, 345, 0]
        mine = uow.retention.list_expired_jobs(days_ago(30), exclude_owners=["bob"], limit=1)
        assert [e.job.id for e in mine] == [oldest.id]
        assert [
            e.job.id for e in uow.retention.list_expired_jobs(days_ago(30), owners=["bob"])
        ] == [bobs.id]


def test_usage_copy_sizes_and_pending_deletions(uow: UnitOfWork) -> None:
    dataset = old_dataset(uow, parquet_key="datasets/x/data.parquet", size_bytes=1000)
    old_dataset(uow, status=DatasetStatus.failed, size_bytes=7)
    job = finished_job(uow, dataset)
    add_job(uow, dataset.id, status=JobStatus.running)
    add_artifact(uow, job, "a.csv", 30)
    old_dataset(uow, owner_id="bob", size_bytes=5)
    with uow:
        assert [d.id for d in uow.retention.list_unmeasured_copies()] == [dataset.id]
        uow.retention.set_copy_bytes(dataset.id, 400)
        uow.retention.add_pending_deletion("results", "jobs/1/")
        uow.retention.add_pending_deletion("datasets", "datasets/2/")
        uow.commit()
    with uow:
        assert uow.retention.list_unmeasured_copies() == []
        # Neither measuring nor a job's creation touch updated_at (the recovery loop's clock).
        measured = uow.datasets.get_for_worker(dataset.id)
        assert measured is not None and measured.updated_at == dataset.updated_at
        unused = uow.retention.list_unused_datasets(days_ago(30), owners=["alice"])
        pending = uow.retention.list_pending_deletions()
        assert [(p.bucket, p.prefix) for p in pending] == [
            ("results", "jobs/1/"),
            ("datasets", "datasets/2/"),
        ]
        uow.retention.remove_pending_deletion(pending[0].id)
        uow.commit()
    assert dataset.id not in {u.dataset.id for u in unused}  # its running job uses it
    with uow:
        assert [p.prefix for p in uow.retention.list_pending_deletions()] == ["datasets/2/"]
        alice = uow.retention.usage(ALICE)
        nobody = uow.retention.usage(Principal(owner_id="carol", scope=KeyScope.read))
        everyone = uow.retention.usage_of_all_owners()
    assert alice.datasets == {"ready": 1, "failed": 1}
    assert alice.jobs == {"completed": 1, "running": 1}
    assert (alice.dataset_bytes, alice.copy_bytes, alice.artifacts, alice.artifact_bytes) == (
        1007,
        400,
        1,
        30,
    )
    assert alice.total_bytes == 1437
    assert nobody.total_bytes == 0 and nobody.datasets == {} and nobody.jobs == {}
    assert [(u.owner_id, u.total_bytes) for u in everyone] == [("alice", 1437), ("bob", 5)]


def test_the_sweep_deletes_expired_records_and_objects_and_spares_what_is_in_use(
    uow: UnitOfWork, tmp_path: Path
) -> None:
    datasets, results = LocalObjectStorage(tmp_path / "d"), LocalObjectStorage(tmp_path / "r")
    for storage in (datasets, results):
        storage.ensure_ready()
    source = tmp_path / "file"
    source.write_bytes(b"x" * 64)

    def store(storage: LocalObjectStorage, prefix: str) -> None:
        for name in ("original.csv", "data.parquet", "attempt-1/a.csv", "attempt-2/a.csv"):
            storage.put_file(f"{prefix}{name}", source)

    expired = old_dataset(uow)
    in_use = old_dataset(uow)
    running = add_job(uow, in_use.id, status=JobStatus.running, created_at=days_ago(40))
    old_job = finished_job(uow, expired)
    add_artifact(uow, old_job, "a.csv", 64)
    for dataset in (expired, in_use):
        store(datasets, f"datasets/{dataset.id}/")
    for job in (running, old_job):
        store(results, f"jobs/{job.id}/")
    policy = RetentionPolicy(job_days=30, dataset_unused_days=30)
    listed = list_expired(uow, policy, datetime.now(UTC))
    assert [(i.kind, i.id) for i in listed] == [("job", old_job.id), ("dataset", expired.id)]

    assert sweep(uow, datasets, results, policy, datetime.now(UTC)) == 2

    with uow:
        assert uow.jobs.get_for_worker(old_job.id) is None
        assert uow.datasets.get_for_worker(expired.id) is None
        assert uow.jobs.get_for_worker(running.id) is not None
        assert uow.datasets.get_for_worker(in_use.id) is not None
        assert uow.retention.list_pending_deletions() == []
    assert not datasets.exists(f"datasets/{expired.id}/original.csv")
    assert not results.exists(f"jobs/{old_job.id}/attempt-1/a.csv")
    assert not results.exists(f"jobs/{old_job.id}/attempt-2/a.csv")
    assert datasets.exists(f"datasets/{in_use.id}/data.parquet")
    assert results.exists(f"jobs/{running.id}/attempt-2/a.csv")
    assert usage(uow, ALICE).datasets == {"ready": 1}


def test_a_dataset_a_schedule_names_or_an_export_reads_is_in_use(uow: UnitOfWork) -> None:
    from schemas.domain.exports import Export, ExportMode, ExportStatus
    from schemas.domain.ids import new_id
    from schemas.domain.schedules import Schedule, ScheduleAction

    scheduled, exported, idle = old_dataset(uow), old_dataset(uow), old_dataset(uow)
    now = datetime.now(UTC)
    with uow:
        uow.schedules.add(
            Schedule(
                id=new_id(),
                owner_id=scheduled.owner_id,
                name="weekly",
                interval_seconds=7 * 86400,
                enabled=False,  # paused: it still needs the dataset when resumed
                action=ScheduleAction(dataset_id=scheduled.id, steps=[{"processor": "metrics"}]),
                created_at=now,
                updated_at=now,
            )
        )
        uow.exports.add(
            Export(
                id=new_id(),
                owner_id=exported.owner_id,
                dataset_id=exported.id,
                destination="warehouse",
                table_name="t",
                mode=ExportMode.create,
                status=ExportStatus.queued,
                created_at=now,
                updated_at=now,
            )
        )
        uow.commit()
    with uow:
        found = {u.dataset.id for u in uow.retention.list_unused_datasets(days_ago(30))}
        assert found == {idle.id}
        assert not uow.retention.delete_unused_dataset(scheduled.id, days_ago(30))
        assert not uow.retention.delete_unused_dataset(exported.id, days_ago(30))
        assert uow.retention.delete_unused_dataset(idle.id, days_ago(30))
