"""The figures /metrics reads from the database, on SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta
from typing import Any

from db.engine import make_engine
from main import database_stats_reader
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.records import (
    Artifact,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    Job,
    JobStatus,
    JobStep,
)


def dataset(status: DatasetStatus, size: int) -> Dataset:
    at = datetime.now(UTC)
    return Dataset(
        id=new_id(),
        owner_id="o",
        name="d.csv",
        format=DatasetFormat.csv,
        status=status,
        size_bytes=size,
        sha256="ab" * 32,
        storage_key=f"k/{new_id()}",
        created_at=at,
        updated_at=at,
    )


def job(dataset_id: Any, status: JobStatus, age_s: float, **fields: Any) -> Job:
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    return Job(
        id=new_id(),
        owner_id="o",
        dataset_id=dataset_id,
        status=status,
        steps=[JobStep(processor="metrics")],
        created_at=at,
        updated_at=at,
        **fields,
    )


def test_counts_bytes_queue_age_and_heartbeats(migrated_database_url: str) -> None:
    engine = make_engine(migrated_database_url)
    try:
        uow = SqlUnitOfWork(engine)
        ready = dataset(DatasetStatus.ready, 100)
        now = datetime.now(UTC)
        with uow:
            uow.datasets.add(ready)
            uow.datasets.add(dataset(DatasetStatus.ready, 50))
            uow.datasets.add(dataset(DatasetStatus.failed, 7))
            uow.jobs.add(job(ready.id, JobStatus.queued, 120))
            uow.jobs.add(job(ready.id, JobStatus.queued, 10))
            uow.jobs.add(
                job(ready.id, JobStatus.running, 60, heartbeat_at=now - timedelta(seconds=30))
            )
            uow.jobs.add(job(ready.id, JobStatus.running, 60, heartbeat_at=now))
            done = job(ready.id, JobStatus.completed, 60)
            uow.jobs.add(done)
            uow.artifacts.add(
                Artifact(
                    job_id=done.id,
                    name="a.json",
                    content_type="application/json",
                    size_bytes=300,
                    sha256="cd" * 32,
                    storage_key="jobs/a.json",
                    created_at=now,
                )
            )
            uow.commit()
        stats = database_stats_reader(engine, heartbeat_timeout_s=5)()
        assert stats.datasets == {"ready": 2, "failed": 1}
        assert stats.dataset_bytes == {"ready": 150, "failed": 7}
        assert stats.jobs == {"queued": 2, "running": 2, "completed": 1}
        assert stats.oldest_queued_at is not None
        assert 119 <= (now - stats.oldest_queued_at).total_seconds() <= 130
        assert stats.stalest_heartbeat_at is not None
        assert 29 <= (now - stats.stalest_heartbeat_at).total_seconds() <= 40
        assert stats.stale_running == 1
        assert (stats.artifacts, stats.artifact_bytes) == (1, 300)
    finally:
        engine.dispose()


def test_an_empty_database_reads_as_zeros(migrated_database_url: str) -> None:
    engine = make_engine(migrated_database_url)
    try:
        stats = database_stats_reader(engine, heartbeat_timeout_s=5)()
    finally:
        engine.dispose()
    assert (stats.datasets, stats.jobs, stats.oldest_queued_at) == ({}, {}, None)
    assert (stats.artifacts, stats.artifact_bytes, stats.stale_running) == (0, 0, 0)
