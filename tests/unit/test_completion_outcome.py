"""A completing COMMIT whose reply is lost: the job says whether it took, and its files stay."""

from pathlib import Path

from schemas.domain.records import JobStatus, JobStep
from services.processing.processors.base import ComputeLimits
from tests.unit.test_job_use_cases import ME, add_dataset, types, world  # noqa: F401
from use_cases.jobs import submit_job
from use_cases.run_job import EngineSettings, Outcome, run_job
from workers.tasks import claim_retry_delay

ZSCORE = [JobStep(processor="anomalies", params={"method": "zscore"})]  # writes an artifact


def cut_after_completing(uow, job_id) -> list[int]:
    """Make the commit that completes the job raise once, after it took (as a lost reply)."""
    real_commit, cuts = uow.commit, list[int]()

    def commit(*, durable: bool = True) -> None:
        real_commit(durable=durable)
        if not cuts and uow.jobs.rows[job_id].status == JobStatus.completed:
            cuts.append(1)
            raise ConnectionError("server closed the connection unexpectedly")

    uow.commit = commit
    return cuts


def run(uow, datasets, results, job_id, tmp_path: Path, new_uow=None, read_back_s=5.0):
    return run_job(
        new_uow or (lambda: uow),
        datasets,
        results,
        job_id,
        worker_id="w1",
        workdir=tmp_path / "work",
        engine=EngineSettings(heartbeat_interval_s=0.05, completion_read_back_s=read_back_s),
        compute=ComputeLimits(),
        is_transient=lambda exc: isinstance(exc, ConnectionError),
    )


def test_a_commit_that_took_before_its_connection_dropped_keeps_the_job_completed(
    world,  # noqa: F811
    tmp_path,
):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=ZSCORE)
    cuts = cut_after_completing(uow, job.id)

    assert run(uow, datasets, results, job.id, tmp_path) == Outcome.completed

    assert cuts == [1]
    done = uow.jobs.get(job.id, ME)
    assert (done.status, done.attempts) == (JobStatus.completed, 1)
    artifacts = uow.artifacts.list_for_job(ME, job.id)
    assert artifacts and all(a.storage_key in results.objects for a in artifacts)
    assert types(uow, job.id).count("completed") == 1
    assert "retried" not in types(uow, job.id)


def test_when_the_outcome_cannot_be_read_the_files_stay_for_the_reaper_to_decide(
    world,  # noqa: F811
    tmp_path,
):
    uow, datasets, results, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=ZSCORE)
    cuts = cut_after_completing(uow, job.id)

    def new_uow():
        if cuts:  # the database is gone after the cut
            raise ConnectionError("connection refused")
        return uow

    outcome = run(uow, datasets, results, job.id, tmp_path, new_uow=new_uow, read_back_s=0.2)

    assert outcome == Outcome.lost
    assert uow.jobs.get(job.id, ME).status == JobStatus.completed
    keys = [a.storage_key for a in uow.artifacts.list_for_job(ME, job.id)]
    assert keys and all(key in results.objects for key in keys)


def test_a_message_the_database_could_not_take_is_delivered_again_within_two_seconds():
    delays = [claim_retry_delay(retries) for retries in range(10)]
    assert delays[0] <= 0.5 and max(delays) == 2.0
    assert delays == sorted(delays)
