"""Job use cases and the engine over fakes, with the real processors on a small Parquet file."""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from schemas.domain.ids import new_id
from schemas.domain.records import (
    ColumnInfo,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    JobStatus,
    JobStep,
    KeyScope,
    Principal,
)
from services.processing.processors.base import ComputeLimits
from tests.fakes import FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.errors import Conflict, InvalidParams, NotFound
from use_cases.jobs import cancel_job, delete_job, recover_jobs, release_waiting_jobs, submit_job
from use_cases.run_job import EngineSettings, Outcome, run_job

COLUMNS = [
    ColumnInfo(name="x", type="float", null_count=0),
    ColumnInfo(name="g", type="string", null_count=0),
]
METRICS = [JobStep(processor="metrics")]
ME = Principal(owner_id="default", scope=KeyScope.write)
THEM = Principal(owner_id="mallory", scope=KeyScope.admin)  # an admin key is still one owner's


@pytest.fixture
def world(tmp_path: Path):
    uow, datasets, results, queue = FakeUnitOfWork(), FakeStorage(), FakeStorage(), FakeQueue()
    parquet = tmp_path / "data.parquet"
    duckdb.sql(
        "COPY (SELECT i::DOUBLE AS x, (i % 3)::VARCHAR AS g FROM range(1000) t(i)) "
        f"TO '{parquet}' (FORMAT parquet)"
    )
    return uow, datasets, results, queue, parquet


def add_dataset(
    uow, storage, parquet: Path, status=DatasetStatus.ready, owner_id: str = ME.owner_id
) -> Dataset:
    now = datetime.now(UTC)
    dataset = Dataset(
        id=new_id(),
        owner_id=owner_id,
        name="d",
        format=DatasetFormat.csv,
        status=status,
        size_bytes=1,
        sha256="0" * 64,
        storage_key="k",
        parquet_key=f"p/{new_id()}",
        row_count=1000,
        columns=COLUMNS if status == DatasetStatus.ready else None,
        created_at=now,
        updated_at=now,
    )
    uow.datasets.add(dataset)
    storage.put_file(dataset.parquet_key, parquet)
    return dataset


def run(uow, datasets, results, job_id, tmp_path, **kwargs):
    return run_job(
        lambda: uow,
        datasets,
        results,
        job_id,
        worker_id="w1",
        workdir=tmp_path / "work",
        engine=EngineSettings(heartbeat_interval_s=0.05),
        compute=ComputeLimits(),
        is_transient=kwargs.get("is_transient", lambda exc: isinstance(exc, ConnectionError)),
    )


def types(uow, job_id) -> list[str]:
    return [e.type for e in uow.job_events.list_for_job(ME, job_id)]


def test_submit_publishes_after_commit_and_the_worker_completes_once(world, tmp_path):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    steps = [
        JobStep(processor="metrics"),
        JobStep(processor="anomalies", params={"method": "zscore"}),
        JobStep(processor="anomalies", params={"method": "iqr"}),
    ]
    job, created = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=steps)
    assert created and queue.jobs == [job.id]

    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.completed
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.skipped  # duplicate delivery

    done = uow.jobs.get(job.id, ME)
    assert (done.status, done.attempts, done.progress) == (JobStatus.completed, 1, 1.0)
    assert [a.name for a in uow.artifacts.list_for_job(ME, job.id)] == [
        "anomalies-2.csv",
        "anomalies.csv",
    ]
    assert all(k.startswith(f"jobs/{job.id}/attempt-1/") for k in results.objects)
    assert types(uow, job.id).count("completed") == 1
    history = [t for t in types(uow, job.id) if t != "progress"]
    steps_events = ["step_started", "step_completed"] * 3
    assert history == ["created", "enqueued", "started", *steps_events, "completed"]
    assert done.result["steps"][0]["summary"]["row_count"] == 1000


def test_idempotency_key_replays_the_job_or_conflicts(world):
    uow, datasets, _, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    first, created = submit_job(
        uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS, idempotency_key="k"
    )
    again, created_again = submit_job(
        uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS, idempotency_key="k"
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict):
        submit_job(
            uow,
            queue,
            principal=ME,
            dataset_id=dataset.id,
            steps=METRICS,
            name="x",
            idempotency_key="k",
        )


def test_bad_steps_name_the_step_and_field(world):
    uow, datasets, _, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    with pytest.raises(InvalidParams) as unknown:
        submit_job(
            uow, queue, principal=ME, dataset_id=dataset.id, steps=[JobStep(processor="nope")]
        )
    assert unknown.value.details["field"] == "steps[0].processor"
    steps = [
        JobStep(processor="metrics"),
        JobStep(processor="anomalies", params={"method": "zscore", "columns": ["g"]}),
    ]
    with pytest.raises(InvalidParams) as wrong_type:
        submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=steps)
    assert wrong_type.value.details["field"] == "steps[1].params.columns[0]"
    with pytest.raises(NotFound):
        submit_job(uow, queue, principal=ME, dataset_id=new_id(), steps=METRICS)
    failed = add_dataset(uow, datasets, parquet, status=DatasetStatus.failed)
    with pytest.raises(Conflict):
        submit_job(uow, queue, principal=ME, dataset_id=failed.id, steps=METRICS)


def test_a_job_waits_for_its_dataset_then_runs_or_fails(world):
    uow, datasets, _, queue, parquet = world
    pending = add_dataset(uow, datasets, parquet, status=DatasetStatus.validating)
    ok, _ = submit_job(uow, queue, principal=ME, dataset_id=pending.id, steps=METRICS)
    bad_column, _ = submit_job(
        uow,
        queue,
        principal=ME,
        dataset_id=pending.id,
        steps=[JobStep(processor="metrics", params={"columns": ["nope"]})],
    )
    assert queue.jobs == []  # nothing to run yet
    uow.datasets.transition(
        pending.id,
        [DatasetStatus.validating],
        DatasetStatus.ready,
        columns=[c.model_dump() for c in COLUMNS],
    )
    release_waiting_jobs(uow, queue, pending.id)
    assert queue.jobs == [ok.id]
    assert (uow.jobs.get(ok.id, ME).status, uow.jobs.get(ok.id, ME).message) == (
        JobStatus.queued,
        "queued",
    )
    assert uow.jobs.get(bad_column.id, ME).status == JobStatus.failed
    assert "nope" in uow.jobs.get(bad_column.id, ME).error["message"]

    doomed = add_dataset(uow, datasets, parquet, status=DatasetStatus.validating)
    waiting, _ = submit_job(uow, queue, principal=ME, dataset_id=doomed.id, steps=METRICS)
    uow.datasets.transition(
        doomed.id, [DatasetStatus.validating], DatasetStatus.failed, error="file is empty"
    )
    release_waiting_jobs(uow, queue, doomed.id)
    assert uow.jobs.get(waiting.id, ME).status == JobStatus.failed
    assert "file is empty" in uow.jobs.get(waiting.id, ME).error["message"]


def test_cancel_of_a_queued_job_is_immediate_and_the_worker_skips_it(world, tmp_path):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS)
    assert cancel_job(uow, queue, job.id, ME).status == JobStatus.cancelled
    assert queue.revoked == [job.id]
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.skipped
    with pytest.raises(Conflict):
        cancel_job(uow, queue, job.id, ME)


def test_cancel_while_running_removes_partial_artifacts(world, tmp_path, monkeypatch):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    steps = [
        JobStep(processor="anomalies", params={"method": "zscore"}),
        JobStep(processor="metrics"),
    ]
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=steps)
    real_put = results.put_file
    seen_during_the_step: list[str] = []

    def put_then_cancel(key, path, content_type=None):
        real_put(key, path, content_type)
        uow.jobs.request_cancel(job.id)  # the user cancels while step 2 is about to start
        time.sleep(0.3)  # several heartbeats (0.05 s): the monitor has seen it before step 2
        seen_during_the_step.extend(types(uow, job.id))

    monkeypatch.setattr(results, "put_file", put_then_cancel)
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.cancelled
    assert uow.jobs.get(job.id, ME).status == JobStatus.cancelled
    assert "step_started" in seen_during_the_step  # a heartbeat wrote it while the step ran
    history = [t for t in types(uow, job.id) if t != "progress"]
    assert history[-3:] == ["step_started", "step_completed", "cancelled"]
    assert results.objects == {}
    assert uow.artifacts.list_for_job(ME, job.id) == []


def test_data_errors_fail_at_once_and_transient_errors_retry(world, tmp_path):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS)
    datasets.objects.pop(dataset.parquet_key)
    real_download = datasets.download_file
    datasets.download_file = lambda key, path: (_ for _ in ()).throw(ConnectionError("blip"))
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.retry
    assert uow.jobs.get(job.id, ME).status == JobStatus.queued
    datasets.download_file = real_download
    datasets.put_file(dataset.parquet_key, parquet)
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.completed
    assert uow.jobs.get(job.id, ME).attempts == 2
    assert "retried" in types(uow, job.id)


def test_reaper_requeues_silent_jobs_then_gives_up_and_removes_their_files(world):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    for attempt in (1, 2):
        claimed = uow.jobs.claim(job.id, "dead-worker", long_ago)
        assert claimed.attempts == attempt
        results.objects[f"jobs/{job.id}/attempt-{attempt}/half.csv"] = b"a dead attempt's"
        acted = recover_jobs(
            uow, queue, results, heartbeat_timeout_s=30, grace_s=60, max_attempts=2
        )
        assert acted == 1
    failed = uow.jobs.get(job.id, ME)
    assert failed.status == JobStatus.failed
    assert failed.error["type"] == "WorkerLost"
    assert types(uow, job.id).count("requeued") == 1
    assert not [key for key in results.objects if key.startswith(f"jobs/{job.id}/")]


def test_a_cancel_during_a_transient_error_ends_cancelled_not_requeued(world, tmp_path):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS)

    def cancel_then_fail(key, path):
        uow.jobs.request_cancel(job.id)
        raise ConnectionError("blip")

    datasets.download_file = cancel_then_fail
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.cancelled
    assert uow.jobs.get(job.id, ME).status == JobStatus.cancelled


def test_reaper_finishes_a_queued_job_whose_cancel_was_requested(world):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS)
    uow.jobs.request_cancel(job.id)  # as if a cancel raced a requeue
    uow.jobs.rows[job.id] = uow.jobs.rows[job.id].model_copy(
        update={"updated_at": datetime.now(UTC) - timedelta(hours=1)}
    )
    recover_jobs(uow, queue, results, heartbeat_timeout_s=30, grace_s=60, max_attempts=3)
    assert uow.jobs.get(job.id, ME).status == JobStatus.cancelled


def test_another_owner_can_neither_see_nor_touch_a_job(world, tmp_path):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    steps = [JobStep(processor="anomalies", params={"method": "zscore"})]  # writes an artifact
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=steps)
    with pytest.raises(NotFound):  # their dataset is as missing as a dataset that never was
        submit_job(uow, queue, principal=THEM, dataset_id=dataset.id, steps=METRICS)
    with pytest.raises(NotFound):
        cancel_job(uow, queue, job.id, THEM)
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.completed
    with pytest.raises(NotFound):
        delete_job(uow, results, job.id, THEM)
    assert queue.revoked == []
    assert uow.jobs.get(job.id, THEM) is None
    assert uow.job_events.list_for_job(THEM, job.id) == []
    assert uow.artifacts.list_for_job(THEM, job.id) == []
    assert uow.artifacts.get(THEM, job.id, "anomalies.csv") is None
    assert uow.artifacts.get(ME, job.id, "anomalies.csv") is not None
    assert uow.jobs.get(job.id, ME).status == JobStatus.completed
    assert uow.jobs.get_for_worker(job.id) == uow.jobs.get(job.id, ME)
    assert results.objects  # nothing was deleted
    delete_job(uow, results, job.id, ME)
    assert uow.jobs.get_for_worker(job.id) is None and results.objects == {}


def test_idempotency_keys_are_per_owner(world):
    uow, datasets, _, queue, parquet = world
    mine = add_dataset(uow, datasets, parquet)
    theirs = add_dataset(uow, datasets, parquet, owner_id=THEM.owner_id)
    first, _ = submit_job(
        uow, queue, principal=ME, dataset_id=mine.id, steps=METRICS, idempotency_key="k"
    )
    other, created = submit_job(
        uow, queue, principal=THEM, dataset_id=theirs.id, steps=METRICS, idempotency_key="k"
    )
    assert created and other.id != first.id and other.owner_id == THEM.owner_id


def test_a_job_failed_by_an_outage_says_what_was_down_but_not_where(world, tmp_path, monkeypatch):
    from ports.storage import StorageUnavailable
    from use_cases import run_job as run_job_module

    monkeypatch.setattr(run_job_module, "storage_retry", lambda call: call)  # no waits in place

    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=METRICS)

    def down(key, path):
        raise StorageUnavailable("could not reach http://10.1.2.3:9000/datasets: timed out")

    datasets.download_file = down
    transient = {"is_transient": lambda exc: isinstance(exc, StorageUnavailable)}
    outcomes = [run(uow, datasets, results, job.id, tmp_path, **transient) for _ in range(3)]

    assert outcomes == [Outcome.retry, Outcome.retry, Outcome.failed]
    error = uow.jobs.get(job.id, ME).error
    assert error["message"] == "storage was unavailable (StorageUnavailable)"
    assert "10.1.2.3" not in str(uow.job_events.list_for_job(ME, job.id))


def test_a_step_names_columns_as_the_dataset_does_when_two_differ_only_in_case(world, tmp_path):
    uow, datasets, results, queue, _ = world
    parquet = tmp_path / "cases.parquet"  # as ingest stores `a,A`: the copy's names a, A_1
    duckdb.sql(
        "COPY (SELECT i::DOUBLE AS a, (i * 10)::DOUBLE AS A_1 FROM range(1000) t(i)) "
        f"TO '{parquet}' (FORMAT parquet)"
    )
    dataset = add_dataset(uow, datasets, parquet)
    columns = [ColumnInfo(name=n, type="float", null_count=0) for n in ("a", "A")]
    uow.datasets.update(dataset.id, columns=columns)
    steps = [
        JobStep(processor="metrics", params={"columns": ["A"]}),
        JobStep(processor="anomalies", params={"method": "zscore", "columns": ["a", "A"]}),
    ]
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=steps)
    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.completed
    summaries = [s["summary"] for s in uow.jobs.get(job.id, ME).result["steps"]]
    assert list(summaries[0]["columns"]) == ["A"]
    assert summaries[0]["columns"]["A"]["max"] == 9990
    assert list(summaries[1]["columns"]) == ["a", "A"]
