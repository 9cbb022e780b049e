"""Retention over fakes: what expires, what is never touched, objects going with records."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.domain.ids import new_id
from schemas.domain.records import (
    Artifact,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    Job,
    JobStatus,
    JobStep,
    KeyScope,
    Principal,
)
from schemas.settings import OwnerRetention, Settings
from tests.fakes import FakeStorage, FakeUnitOfWork
from use_cases.retention import (
    RetentionPolicy,
    list_expired,
    measure_copies,
    sweep,
    usage,
    usage_of_owners,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ALICE, BOB = "alice", "bob"


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


class World:
    """A fake unit of work and both buckets, with helpers that store records and objects."""

    def __init__(self) -> None:
        self.uow = FakeUnitOfWork()
        self.datasets = FakeStorage()
        self.results = FakeStorage()

    def dataset(
        self, *, owner: str = ALICE, age: float = 40, status: DatasetStatus = DatasetStatus.ready
    ) -> Dataset:
        dataset_id = new_id()
        dataset = Dataset(
            id=dataset_id,
            owner_id=owner,
            name=f"{dataset_id}.csv",
            format=DatasetFormat.csv,
            status=status,
            size_bytes=100,
            sha256="0" * 64,
            storage_key=f"datasets/{dataset_id}/original.csv",
            parquet_key=f"datasets/{dataset_id}/data.parquet",
            created_at=days_ago(age),
            updated_at=days_ago(age),
        )
        self.uow.datasets.rows[dataset_id] = dataset  # add() keeps updated_at as given too
        self.datasets.objects[dataset.storage_key] = b"x" * 100
        self.datasets.objects[f"datasets/{dataset_id}/data.parquet"] = b"p" * 40
        return dataset

    def job(
        self,
        dataset: Dataset | None,
        *,
        status: JobStatus = JobStatus.completed,
        finished: float | None = 40,
        created: float = 41,
        owner: str | None = None,
    ) -> Job:
        job = Job(
            id=new_id(),
            owner_id=owner or (dataset.owner_id if dataset else ALICE),
            dataset_id=dataset.id if dataset else None,
            status=status,
            steps=[JobStep(processor="metrics")],
            created_at=days_ago(created),
            updated_at=days_ago(created),
            finished_at=days_ago(finished) if finished is not None else None,
        )
        self.uow.jobs.add(job)
        for attempt in (1, 2):  # artifacts (or leftovers) under every attempt's prefix
            key = f"jobs/{job.id}/attempt-{attempt}/profile.json"
            self.results.objects[key] = b"r" * 10
        self.uow.artifacts.add(
            Artifact(
                job_id=job.id,
                name="profile.json",
                content_type="application/json",
                size_bytes=10,
                sha256="0" * 64,
                storage_key=f"jobs/{job.id}/attempt-2/profile.json",
                created_at=days_ago(created),
            )
        )
        return job

    def sweep(self, policy: RetentionPolicy, **kwargs: Any) -> int:
        return sweep(self.uow, self.datasets, self.results, policy, NOW, **kwargs)

    def has_objects(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in [*self.datasets.objects, *self.results.objects])


POLICY = RetentionPolicy(job_days=30, dataset_unused_days=30)


def test_expired_records_go_with_their_objects_and_nothing_in_use_is_touched() -> None:
    world = World()
    expired = world.dataset()
    old_job = world.job(None)  # finished 40 days ago, its dataset long gone
    recent_job = world.job(None, finished=2, created=3)
    running = world.job(None, status=JobStatus.running, finished=None)
    busy = world.dataset()  # old, but a job waits on it
    waiting = world.job(busy, status=JobStatus.queued, finished=None)
    validating = world.dataset(status=DatasetStatus.validating)
    used = world.dataset()  # old upload, job created on it 5 days ago
    used_job = world.job(used, finished=4, created=5)

    assert world.sweep(POLICY) == 2

    jobs, datasets = world.uow.jobs.rows, world.uow.datasets.rows
    assert old_job.id not in jobs and not world.has_objects(f"jobs/{old_job.id}/")
    assert expired.id not in datasets and not world.has_objects(f"datasets/{expired.id}/")
    for job in (recent_job, running, waiting, used_job):
        assert job.id in jobs and world.has_objects(f"jobs/{job.id}/")
    for dataset in (busy, validating, used):
        assert dataset.id in datasets and world.has_objects(f"datasets/{dataset.id}/")
    assert not [a for a in world.uow.artifacts.rows if a.job_id == old_job.id]
    assert not world.uow.retention.pending  # every object deletion was carried out
    assert world.sweep(POLICY) == 0  # nothing left to do


def test_a_swept_datasets_finished_jobs_keep_their_results() -> None:
    world = World()
    dataset = world.dataset(age=50)
    job = world.job(dataset, finished=45, created=46)
    policy = RetentionPolicy(job_days=None, dataset_unused_days=30)  # jobs kept forever
    assert world.sweep(policy) == 1
    assert dataset.id not in world.uow.datasets.rows
    assert job.id in world.uow.jobs.rows and world.has_objects(f"jobs/{job.id}/")


def test_off_by_default_deletes_nothing() -> None:
    world = World()
    world.dataset(age=1000)
    world.job(None, finished=1000, created=1001)
    policy = RetentionPolicy.from_settings(Settings())
    assert not policy.enabled
    assert world.sweep(policy) == 0 and list_expired(world.uow, policy, NOW) == []
    assert len(world.uow.jobs.rows) == 1 and len(world.uow.datasets.rows) == 1


def test_owner_overrides_shorten_lengthen_or_turn_off() -> None:
    world = World()
    carol = "carol"
    alice_job = world.job(None, finished=10, created=11)  # alice: 7 days
    bob_job = world.job(None, finished=40, created=41, owner=BOB)  # bob: forever
    carol_job = world.job(None, finished=40, created=41, owner=carol)  # carol: the default
    carol_young = world.job(None, finished=10, created=11, owner=carol)
    bob_dataset = world.dataset(owner=BOB)  # bob's datasets: the deployment's 30 days
    policy = RetentionPolicy(
        job_days=30,
        dataset_unused_days=30,
        owners={ALICE: OwnerRetention(job_days=7), BOB: OwnerRetention(job_days=None)},
    )
    listed = {item.id: item for item in list_expired(world.uow, policy, NOW)}
    assert set(listed) == {alice_job.id, carol_job.id, bob_dataset.id}
    assert listed[alice_job.id].days == 7 and listed[carol_job.id].days == 30
    assert world.sweep(policy) == 3
    assert set(world.uow.jobs.rows) == {bob_job.id, carol_young.id}


def test_settings_parse_owner_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSAY_RETENTION_JOB_DAYS", "30")
    monkeypatch.setenv("ASSAY_RETENTION_OWNERS", '{"alice": {"job_days": 7}, "bob": {}}')
    policy = RetentionPolicy.from_settings(Settings())
    assert policy.groups("job") == [(None, ["alice"], 30), (["alice"], [], 7)]
    assert policy.groups("dataset") == []


def test_the_dry_run_lists_what_the_sweep_deletes_and_deletes_nothing() -> None:
    world = World()
    dataset = world.dataset()
    job = world.job(None)
    items = list_expired(world.uow, POLICY, NOW)
    assert [(i.kind, i.id) for i in items] == [("job", job.id), ("dataset", dataset.id)]
    assert items[0].bytes == 10 and items[0].since == days_ago(40)
    assert items[0].reason == "completed more than 30 day(s) ago"
    assert items[1].since == days_ago(40) and items[1].reason == "not used for more than 30 day(s)"
    assert len(world.uow.jobs.rows) == 1 and len(world.uow.datasets.rows) == 1
    assert world.sweep(POLICY) == 2


def test_a_pass_is_bounded() -> None:
    world = World()
    for _ in range(5):
        world.job(None)
    assert world.sweep(POLICY, limit=2) == 2
    assert len(world.uow.jobs.rows) == 3
    assert world.sweep(POLICY, limit=2) == 2
    assert world.sweep(POLICY, limit=2) == 1


def test_objects_left_by_a_failed_deletion_go_in_the_next_pass() -> None:
    world = World()
    job = world.job(None)
    broken = world.results.delete_prefix

    def storage_down(prefix: str) -> None:
        raise OSError("storage down")

    world.results.delete_prefix = storage_down  # type: ignore[method-assign]
    assert world.sweep(POLICY) == 1
    assert job.id not in world.uow.jobs.rows  # the record is gone ...
    assert world.has_objects(f"jobs/{job.id}/")  # ... its objects wait
    assert len(world.uow.retention.pending) == 1
    world.results.delete_prefix = broken  # type: ignore[method-assign]
    assert world.sweep(POLICY) == 0
    assert not world.has_objects(f"jobs/{job.id}/") and not world.uow.retention.pending


def test_usage_counts_an_owners_records_and_bytes_only() -> None:
    world = World()
    dataset = world.dataset()
    world.job(dataset)
    world.job(dataset, status=JobStatus.running, finished=None)
    world.dataset(owner=BOB)
    assert measure_copies(world.uow, world.datasets) == 2
    alice = usage(world.uow, Principal(owner_id=ALICE, scope=KeyScope.read))
    assert alice.datasets == {"ready": 1}
    assert alice.jobs == {"completed": 1, "running": 1}
    assert (alice.dataset_bytes, alice.copy_bytes, alice.artifact_bytes) == (100, 40, 20)
    assert alice.total_bytes == 160 and alice.artifacts == 2
    everyone = usage_of_owners(world.uow)
    assert [u.owner_id for u in everyone] == [ALICE, BOB]
    assert everyone[1].jobs == {} and everyone[1].total_bytes == 140


def test_the_recovery_loop_sweeps_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes import FakeContext, FakeQueue
    from workers import reaper

    world = World()
    first, second = world.job(None, finished=40, created=41), world.job(None, finished=40)
    context = FakeContext(
        settings=Settings(data_dir=tmp_path, retention_job_days=30),
        new_uow=lambda: world.uow,
        datasets_storage=world.datasets,
        results_storage=world.results,
        queue=FakeQueue(),
    )
    monkeypatch.setattr(reaper, "_retention_due", 0.0)
    assert reaper.sweep_retention(context) == 2
    assert not world.uow.jobs.rows and not world.has_objects(f"jobs/{first.id}/")
    assert not world.has_objects(f"jobs/{second.id}/")
    world.job(None)
    assert reaper.sweep_retention(context) == 0  # swept a moment ago: not due yet
    assert len(world.uow.jobs.rows) == 1
