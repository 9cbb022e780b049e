"""The job, job-event and artifact repository contract.

One suite, run on SQLite and PostgreSQL (through the `uow` fixture) and on the in-memory
fakes of tests/fakes.py, so unit tests of use cases rely on the same semantics.
"""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from ports.repositories import IdempotencyConflict, UnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.records import (
    Artifact,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    FailedRow,
    Job,
    JobEvent,
    JobStatus,
    JobStep,
    KeyScope,
    Principal,
)
from tests.fakes import FakeUnitOfWork

OWNER = "alice"
ALICE = Principal(owner_id=OWNER, scope=KeyScope.read)
MALLORY = Principal(owner_id="mallory", scope=KeyScope.admin)
WORKER = "worker-1"


def now() -> datetime:
    return datetime.now(UTC)


def as_owner(owner_id: str) -> Principal:
    return Principal(owner_id=owner_id, scope=KeyScope.read)


def add_dataset(uow: UnitOfWork, **overrides: Any) -> Dataset:
    values: dict[str, Any] = {
        "id": new_id(),
        "owner_id": OWNER,
        "name": "people.csv",
        "format": DatasetFormat.csv,
        "status": DatasetStatus.ready,
        "size_bytes": 1234,
        "sha256": "ab" * 32,
        "storage_key": "datasets/people.csv",
        "created_at": now(),
        "updated_at": now(),
    }
    dataset = Dataset(**(values | overrides))
    with uow:
        uow.datasets.add(dataset)
        uow.commit()
    return dataset


def make_job(dataset_id: UUID | None, **overrides: Any) -> Job:
    values: dict[str, Any] = {
        "id": new_id(),
        "owner_id": OWNER,
        "dataset_id": dataset_id,
        "status": JobStatus.queued,
        "steps": [JobStep(processor="metrics", params={"columns": ["age"]})],
        "created_at": now(),
        "updated_at": now(),
    }
    return Job(**(values | overrides))


def add_job(uow: UnitOfWork, dataset_id: UUID | None, **overrides: Any) -> Job:
    job = make_job(dataset_id, **overrides)
    with uow:
        uow.jobs.add(job)
        uow.commit()
    return job


def get_job(uow: UnitOfWork, job_id: UUID) -> Job:
    with uow:
        job = uow.jobs.get_for_worker(job_id)
    assert job is not None
    return job


def claim(uow: UnitOfWork, job_id: UUID, worker_id: str = WORKER) -> Job | None:
    with uow:
        job = uow.jobs.claim(job_id, worker_id, now())
        uow.commit()
    return job


def make_artifact(job_id: UUID, name: str) -> Artifact:
    return Artifact(
        job_id=job_id,
        name=name,
        content_type="text/csv",
        size_bytes=10,
        sha256="cd" * 32,
        storage_key=f"jobs/{job_id}/1/{name}",
        created_at=now(),
    )


class JobRepositoryContract:
    """The contract; subclasses provide the `job_uow` fixture."""

    # --- add, get, idempotency ----------------------------------------------------------------

    def test_add_get_and_owner_filter(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        job = add_job(
            job_uow,
            dataset.id,
            name="profile",
            steps=[
                JobStep(processor="metrics", params={"columns": ["age"]}),
                JobStep(processor="anomalies", params={"method": "iqr", "k": 1.5}),
            ],
            error={"type": "DataError", "message": "bad", "step": 1},
            result={"rows": 3, "nested": {"a": [1, 2.5, None]}},
        )
        with job_uow:
            assert job_uow.jobs.get_for_worker(job.id) == job
            assert job_uow.jobs.get(job.id, ALICE) == job
            assert job_uow.jobs.get(job.id, MALLORY) is None
            assert job_uow.jobs.get(new_id(), ALICE) is None
            assert job_uow.jobs.get_for_worker(new_id()) is None

    def test_get_by_idempotency_key(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        job = add_job(job_uow, dataset.id, idempotency_key="k1", request_hash="h" * 64)
        theirs = add_job(job_uow, dataset.id, owner_id="bob", idempotency_key="k1")
        add_job(job_uow, dataset.id)  # no key
        with job_uow:
            assert job_uow.jobs.get_by_idempotency_key(ALICE, "k1") == job
            assert job_uow.jobs.get_by_idempotency_key(as_owner("bob"), "k1") == theirs
            assert job_uow.jobs.get_by_idempotency_key(ALICE, "k2") is None
            assert job_uow.jobs.get_by_idempotency_key(as_owner("carol"), "k1") is None

    def test_idempotency_conflict_leaves_the_transaction_usable(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        first = add_job(job_uow, dataset.id, idempotency_key="k1")
        duplicate, after = make_job(dataset.id, idempotency_key="k1"), make_job(dataset.id)
        with job_uow:
            with pytest.raises(IdempotencyConflict):
                job_uow.jobs.add(duplicate)
            job_uow.jobs.add(after)
            job_uow.job_events.add(JobEvent(job_id=after.id, type="created", created_at=now()))
            job_uow.commit()
        with job_uow:
            assert job_uow.jobs.get_for_worker(first.id) == first
            assert job_uow.jobs.get_for_worker(duplicate.id) is None
            assert job_uow.jobs.get_for_worker(after.id) == after
            assert [e.type for e in job_uow.job_events.list_for_job(ALICE, after.id)] == ["created"]
            assert job_uow.jobs.get_by_idempotency_key(ALICE, "k1") == first

    def test_jobs_without_a_key_never_conflict(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        jobs = [add_job(job_uow, dataset.id) for _ in range(3)]
        with job_uow:
            assert [j.id for j in job_uow.jobs.list(ALICE)] == [j.id for j in jobs[::-1]]

    # --- list ---------------------------------------------------------------------------------

    def test_list_newest_first_with_filters_and_cursor(self, job_uow: UnitOfWork) -> None:
        first, second = add_dataset(job_uow), add_dataset(job_uow)
        # new_id() orders by millisecond only; sorting fixes the creation order within one.
        ids = sorted(new_id() for _ in range(6))
        statuses = [JobStatus.queued, JobStatus.completed, JobStatus.failed] * 2
        datasets = [first.id, first.id, second.id, second.id, first.id, first.id]
        with job_uow:
            for job_id, status, dataset_id in zip(ids, statuses, datasets, strict=True):
                job_uow.jobs.add(make_job(dataset_id, id=job_id, status=status))
            job_uow.jobs.add(make_job(first.id, owner_id="bob"))
            job_uow.commit()

        seen: list[UUID] = []
        before: UUID | None = None
        with job_uow:
            while page := job_uow.jobs.list(ALICE, before=before, limit=4):
                assert len(page) <= 4
                seen += [job.id for job in page]
                before = page[-1].id
        assert seen == ids[::-1]

        with job_uow:
            queued = job_uow.jobs.list(ALICE, status=JobStatus.queued)
            on_first = job_uow.jobs.list(ALICE, dataset_id=first.id)
            completed_on_first = job_uow.jobs.list(
                ALICE, status=JobStatus.completed, dataset_id=first.id
            )
            page = job_uow.jobs.list(ALICE, dataset_id=first.id, limit=2)
            rest = job_uow.jobs.list(ALICE, dataset_id=first.id, before=page[-1].id)
            assert job_uow.jobs.list(as_owner("carol")) == []
        assert [j.id for j in queued] == [ids[3], ids[0]]
        assert [j.id for j in on_first] == [ids[5], ids[4], ids[1], ids[0]]
        assert [j.id for j in completed_on_first] == [ids[4], ids[1]]
        assert [j.id for j in page + rest] == [ids[5], ids[4], ids[1], ids[0]]

    def test_count_active_and_list_queued_for_dataset(self, job_uow: UnitOfWork) -> None:
        dataset, other = add_dataset(job_uow), add_dataset(job_uow)
        older = add_job(job_uow, dataset.id)
        running = add_job(job_uow, dataset.id, status=JobStatus.running, attempts=1)
        newer = add_job(job_uow, dataset.id, owner_id="bob")
        add_job(job_uow, dataset.id, status=JobStatus.completed)
        add_job(job_uow, other.id)
        with job_uow:
            assert job_uow.jobs.count_active_for_dataset(dataset.id) == 3
            assert job_uow.jobs.count_active_for_dataset(new_id()) == 0
            queued = job_uow.jobs.list_queued_for_dataset(dataset.id)
            assert job_uow.jobs.list_queued_for_dataset(new_id()) == []
        assert [j.id for j in queued] == [older.id, newer.id]
        assert running.id not in [j.id for j in queued]

    # --- claim --------------------------------------------------------------------------------

    def test_claim_succeeds_once(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id, updated_at=now() - timedelta(hours=1))
        at = now()
        with job_uow:
            claimed = job_uow.jobs.claim(job.id, WORKER, at)
            job_uow.commit()
        assert claimed is not None
        assert claimed.status == JobStatus.running
        assert claimed.attempts == 1
        assert claimed.worker_id == WORKER
        assert claimed.heartbeat_at == at
        assert claimed.started_at == at
        assert claimed.updated_at == at
        assert get_job(job_uow, job.id) == claimed

        assert claim(job_uow, job.id, "worker-2") is None  # a duplicate delivery
        assert claim(job_uow, new_id()) is None
        stored = get_job(job_uow, job.id)
        assert (stored.attempts, stored.worker_id) == (1, WORKER)

    def test_reclaim_after_requeue_keeps_started_at(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id)
        first = claim(job_uow, job.id)
        assert first is not None
        with job_uow:
            assert job_uow.jobs.transition(
                job.id, [JobStatus.running], JobStatus.queued, attempt=1, worker_id=None
            )
            job_uow.commit()
        second = claim(job_uow, job.id, "worker-2")
        assert second is not None
        assert (second.attempts, second.worker_id) == (2, "worker-2")
        assert second.started_at == first.started_at

    def test_a_cancel_requested_queued_job_cannot_be_claimed(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id)
        with job_uow:
            assert job_uow.jobs.request_cancel(job.id) is True
            job_uow.commit()
        assert claim(job_uow, job.id) is None
        stored = get_job(job_uow, job.id)
        assert (stored.status, stored.attempts, stored.cancel_requested) == (
            JobStatus.queued,
            0,
            True,
        )

    def test_finished_jobs_cannot_be_claimed(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        for status in (JobStatus.running, JobStatus.completed, JobStatus.cancelled):
            assert claim(job_uow, add_job(job_uow, dataset.id, status=status).id) is None

    # --- heartbeat ----------------------------------------------------------------------------

    def test_heartbeat_records_progress_and_reports_cancel(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id)
        assert claim(job_uow, job.id) is not None
        at = now() + timedelta(seconds=5)
        with job_uow:
            beat = job_uow.jobs.heartbeat(
                job.id, 1, at, progress=0.25, message="metrics: 1/4", current_step=0
            )
            job_uow.commit()
        assert beat is False
        stored = get_job(job_uow, job.id)
        assert (stored.progress, stored.message, stored.current_step) == (0.25, "metrics: 1/4", 0)
        assert stored.heartbeat_at == at
        assert stored.updated_at == at

        later = at + timedelta(seconds=5)
        with job_uow:
            assert job_uow.jobs.heartbeat(job.id, 1, later) is False  # liveness only
            job_uow.commit()
        stored = get_job(job_uow, job.id)
        assert (stored.progress, stored.message, stored.current_step) == (0.25, "metrics: 1/4", 0)
        assert stored.heartbeat_at == later

        with job_uow:
            assert job_uow.jobs.request_cancel(job.id) is True
            job_uow.commit()
        with job_uow:
            assert job_uow.jobs.heartbeat(job.id, 1, now(), progress=0.5) is True
            job_uow.commit()
        assert get_job(job_uow, job.id).progress == 0.5

    def test_heartbeat_is_none_when_the_attempt_is_not_running(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        queued = add_job(job_uow, dataset.id)
        running = add_job(job_uow, dataset.id)
        assert claim(job_uow, running.id) is not None
        finished = add_job(job_uow, dataset.id, status=JobStatus.completed, attempts=1)
        with job_uow:
            assert job_uow.jobs.heartbeat(running.id, 2, now()) is None  # a stale attempt
            assert job_uow.jobs.heartbeat(queued.id, 0, now()) is None
            assert job_uow.jobs.heartbeat(finished.id, 1, now()) is None
            assert job_uow.jobs.heartbeat(new_id(), 1, now()) is None
            job_uow.commit()
        assert get_job(job_uow, queued.id).heartbeat_at is None
        assert get_job(job_uow, finished.id).heartbeat_at is None

    # --- transition and cancel ----------------------------------------------------------------

    def test_transition_is_compare_and_set_on_status_and_attempt(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id)
        claimed = claim(job_uow, job.id)
        assert claimed is not None
        finished_at = now()
        result = {"metrics": {"rows": 3}, "artifacts": ["summary.json"]}
        with job_uow:
            running, completed = [JobStatus.running], JobStatus.completed
            assert job_uow.jobs.transition(job.id, running, completed, attempt=2) is False
            assert job_uow.jobs.transition(job.id, [JobStatus.queued], JobStatus.failed) is False
            assert job_uow.jobs.transition(new_id(), running, completed) is False
            done = job_uow.jobs.transition(
                job.id,
                running,
                completed,
                attempt=1,
                result=result,
                finished_at=finished_at,
                progress=1.0,
                message="completed",
            )
            assert done is True
            assert job_uow.jobs.transition(job.id, running, completed, attempt=1) is False
            job_uow.commit()
        stored = get_job(job_uow, job.id)
        assert stored.status == JobStatus.completed
        assert (stored.result, stored.finished_at, stored.progress) == (result, finished_at, 1.0)
        assert stored.message == "completed"
        assert stored.updated_at > claimed.updated_at

    def test_transition_without_attempt_and_with_error(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id, updated_at=now() - timedelta(hours=1))
        error = {"type": "DatasetFailed", "message": "not a CSV", "step": None}
        with job_uow:
            assert job_uow.jobs.transition(
                job.id,
                [JobStatus.queued, JobStatus.running],
                JobStatus.failed,
                error=error,
                finished_at=now(),
            )
            job_uow.commit()
        stored = get_job(job_uow, job.id)
        assert (stored.status, stored.error) == (JobStatus.failed, error)
        assert stored.updated_at > job.updated_at

    def test_a_cancelled_job_is_not_completed_by_a_late_worker(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id)
        assert claim(job_uow, job.id) is not None
        with job_uow:
            assert job_uow.jobs.request_cancel(job.id) is True
            assert job_uow.jobs.transition(
                job.id, [JobStatus.running], JobStatus.cancelled, finished_at=now()
            )
            job_uow.commit()
        with job_uow:  # the worker did not see the flag in time
            late = job_uow.jobs.transition(
                job.id, [JobStatus.running], JobStatus.completed, attempt=1, result={"rows": 3}
            )
            assert late is False
            assert job_uow.jobs.heartbeat(job.id, 1, now()) is None
            job_uow.commit()
        stored = get_job(job_uow, job.id)
        assert (stored.status, stored.result, stored.cancel_requested) == (
            JobStatus.cancelled,
            None,
            True,
        )

    def test_request_cancel_only_for_active_jobs(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        updated = now() - timedelta(hours=1)
        active = [
            add_job(job_uow, dataset.id, status=status, updated_at=updated)
            for status in (JobStatus.queued, JobStatus.running)
        ]
        finished = [
            add_job(job_uow, dataset.id, status=status, updated_at=updated)
            for status in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled)
        ]
        with job_uow:
            for job in active:
                assert job_uow.jobs.request_cancel(job.id) is True
                assert job_uow.jobs.request_cancel(job.id) is True  # asking twice is fine
            for job in finished:
                assert job_uow.jobs.request_cancel(job.id) is False
            assert job_uow.jobs.request_cancel(new_id()) is False
            job_uow.commit()
        for job in active:
            stored = get_job(job_uow, job.id)
            assert stored.cancel_requested is True
            assert stored.updated_at > updated
        for job in finished:
            assert get_job(job_uow, job.id) == job

    # --- reaper queries -----------------------------------------------------------------------

    def test_list_stale_running(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        hour_ago, two_hours_ago = now() - timedelta(hours=1), now() - timedelta(hours=2)
        stale = add_job(job_uow, dataset.id, status=JobStatus.running, heartbeat_at=hour_ago)
        staler = add_job(job_uow, dataset.id, status=JobStatus.running, heartbeat_at=two_hours_ago)
        add_job(job_uow, dataset.id, status=JobStatus.running, heartbeat_at=now())  # alive
        add_job(job_uow, dataset.id, status=JobStatus.queued, heartbeat_at=hour_ago)
        add_job(job_uow, dataset.id, status=JobStatus.completed, heartbeat_at=hour_ago)
        cutoff = now() - timedelta(minutes=5)
        with job_uow:
            assert [j.id for j in job_uow.jobs.list_stale_running(cutoff)] == [staler.id, stale.id]
            assert [j.id for j in job_uow.jobs.list_stale_running(cutoff, limit=1)] == [staler.id]
            assert job_uow.jobs.list_stale_running(two_hours_ago) == []

    def test_list_unclaimed_queued_only_when_the_dataset_is_ready(
        self, job_uow: UnitOfWork
    ) -> None:
        ready = add_dataset(job_uow)
        validating = add_dataset(job_uow, status=DatasetStatus.validating)
        hour_ago, two_hours_ago = now() - timedelta(hours=1), now() - timedelta(hours=2)
        old = add_job(job_uow, ready.id, updated_at=hour_ago)
        older = add_job(job_uow, ready.id, updated_at=two_hours_ago, owner_id="bob")
        add_job(job_uow, ready.id)  # recently queued
        add_job(job_uow, validating.id, updated_at=hour_ago)  # waits for its dataset
        add_job(job_uow, None, updated_at=hour_ago)  # its dataset is gone
        add_job(job_uow, ready.id, status=JobStatus.running, updated_at=hour_ago)
        add_job(job_uow, ready.id, status=JobStatus.failed, updated_at=hour_ago)
        cutoff = now() - timedelta(minutes=5)
        with job_uow:
            unclaimed = job_uow.jobs.list_unclaimed_queued(cutoff)
            first = job_uow.jobs.list_unclaimed_queued(cutoff, limit=1)
        assert [j.id for j in unclaimed] == [older.id, old.id]
        assert [j.id for j in first] == [older.id]

        with job_uow:
            job_uow.datasets.transition(
                validating.id, [DatasetStatus.validating], DatasetStatus.ready
            )
            job_uow.commit()
        with job_uow:
            assert len(job_uow.jobs.list_unclaimed_queued(cutoff)) == 3

    def test_touch_restarts_the_grace_period(self, job_uow: UnitOfWork) -> None:
        job = add_job(job_uow, add_dataset(job_uow).id, updated_at=now() - timedelta(hours=1))
        cutoff = now() - timedelta(minutes=5)
        with job_uow:
            assert [j.id for j in job_uow.jobs.list_unclaimed_queued(cutoff)] == [job.id]
            assert job_uow.jobs.touch(job.id) is True
            assert job_uow.jobs.touch(new_id()) is False  # nothing to touch
            job_uow.commit()
        with job_uow:
            assert job_uow.jobs.list_unclaimed_queued(cutoff) == []
        stored = get_job(job_uow, job.id)
        assert stored.updated_at > cutoff
        assert stored.model_copy(update={"updated_at": job.updated_at}) == job

    def test_touch_sets_the_message_of_a_queued_job_only(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        updated = now() - timedelta(hours=1)
        waiting = add_job(job_uow, dataset.id, message="waiting", updated_at=updated)
        running = add_job(job_uow, dataset.id, status=JobStatus.running, updated_at=updated)
        with job_uow:
            assert job_uow.jobs.touch(waiting.id, message="queued") is True
            assert job_uow.jobs.touch(running.id, message="queued") is False
            job_uow.commit()
        stored = get_job(job_uow, waiting.id)
        assert (stored.status, stored.message) == (JobStatus.queued, "queued")
        assert stored.updated_at > updated
        assert get_job(job_uow, running.id) == running

    # --- delete, events, artifacts ------------------------------------------------------------

    def test_delete_removes_events_and_artifacts(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        doomed = add_job(job_uow, dataset.id, status=JobStatus.completed)
        kept = add_job(job_uow, dataset.id, status=JobStatus.completed)
        with job_uow:
            for job in (doomed, kept):
                for kind in ("created", "completed"):
                    job_uow.job_events.add(JobEvent(job_id=job.id, type=kind, created_at=now()))
                job_uow.artifacts.add(make_artifact(job.id, "summary.json"))
            job_uow.commit()
        with job_uow:
            job_uow.jobs.delete(doomed.id)
            job_uow.jobs.delete(new_id())  # nothing to delete
            job_uow.commit()
        with job_uow:
            assert job_uow.jobs.get_for_worker(doomed.id) is None
            assert job_uow.job_events.list_for_job(ALICE, doomed.id) == []
            assert job_uow.artifacts.list_for_job(ALICE, doomed.id) == []
            assert job_uow.artifacts.get(ALICE, doomed.id, "summary.json") is None
            assert job_uow.jobs.get_for_worker(kept.id) == kept
            assert len(job_uow.job_events.list_for_job(ALICE, kept.id)) == 2
            assert [a.name for a in job_uow.artifacts.list_for_job(ALICE, kept.id)] == [
                "summary.json"
            ]
            # Event ids keep increasing after a delete.
            event = job_uow.job_events.add(JobEvent(job_id=kept.id, type="x", created_at=now()))
            assert (event.id or 0) > max(
                e.id or 0 for e in job_uow.job_events.list_for_job(ALICE, kept.id)[:2]
            )

    def test_add_many_appends_events_in_order(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        job, other = add_job(job_uow, dataset.id), add_job(job_uow, dataset.id)
        kinds = ["step_started", "step_completed", "completed"]
        with job_uow:
            job_uow.job_events.add(JobEvent(job_id=job.id, type="started", created_at=now()))
            job_uow.job_events.add_many(
                [
                    JobEvent(job_id=job.id, type=k, payload={"n": i}, created_at=now())
                    for i, k in enumerate(kinds)
                ]
                + [JobEvent(job_id=other.id, type="started", created_at=now())]
            )
            job_uow.job_events.add_many([])
            job_uow.commit()
        with job_uow:
            events = job_uow.job_events.list_for_job(ALICE, job.id)
            assert [e.type for e in events] == ["started", *kinds]
            assert [e.payload for e in events[1:]] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert [e.type for e in job_uow.job_events.list_for_job(ALICE, other.id)] == ["started"]

    def test_artifact_get_by_name(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        job, other = add_job(job_uow, dataset.id), add_job(job_uow, dataset.id)
        summary, flagged = (
            make_artifact(job.id, "summary.json"),
            make_artifact(job.id, "flagged.csv"),
        )
        with job_uow:
            job_uow.artifacts.add(summary)
            job_uow.artifacts.add(flagged)
            job_uow.artifacts.add(make_artifact(other.id, "report.csv"))
            job_uow.commit()
        with job_uow:
            assert job_uow.artifacts.get(ALICE, job.id, "summary.json") == summary
            assert job_uow.artifacts.get(ALICE, job.id, "flagged.csv") == flagged
            assert job_uow.artifacts.get(ALICE, job.id, "report.csv") is None
            assert job_uow.artifacts.get(ALICE, new_id(), "summary.json") is None
            assert job_uow.artifacts.list_for_job(ALICE, job.id) == [flagged, summary]

    # --- owners -------------------------------------------------------------------------------

    def test_another_owner_gets_nothing_from_scoped_reads(self, job_uow: UnitOfWork) -> None:
        dataset = add_dataset(job_uow)
        job = add_job(job_uow, dataset.id, idempotency_key="k1", request_hash="h" * 64)
        row = FailedRow(dataset_id=dataset.id, line_number=2, raw_text="x", reason="bad")
        artifact = make_artifact(job.id, "summary.json")
        with job_uow:
            job_uow.failed_rows.add_many([row])
            event = job_uow.job_events.add(
                JobEvent(job_id=job.id, type="created", created_at=now())
            )
            job_uow.artifacts.add(artifact)
            job_uow.commit()
        # Bob has records of his own, so a filter on "anything of this owner" would show.
        bob = as_owner("bob")
        bobs_dataset = add_dataset(job_uow, owner_id="bob")
        bobs_job = add_job(job_uow, bobs_dataset.id, owner_id="bob")
        with job_uow:
            job_uow.failed_rows.add_many([row.model_copy(update={"dataset_id": bobs_dataset.id})])
            job_uow.job_events.add(JobEvent(job_id=bobs_job.id, type="created", created_at=now()))
            job_uow.artifacts.add(make_artifact(bobs_job.id, "summary.json"))
            job_uow.commit()

        with job_uow:
            assert job_uow.datasets.get(dataset.id, bob) is None
            assert [d.id for d in job_uow.datasets.list(bob)] == [bobs_dataset.id]
            assert job_uow.jobs.get(job.id, bob) is None
            assert [j.id for j in job_uow.jobs.list(bob)] == [bobs_job.id]
            assert job_uow.jobs.list(bob, dataset_id=dataset.id) == []
            assert job_uow.jobs.get_by_idempotency_key(bob, "k1") is None
            assert job_uow.failed_rows.list(bob, dataset.id) == []
            assert job_uow.job_events.list_for_job(bob, job.id) == []
            assert job_uow.artifacts.list_for_job(bob, job.id) == []
            assert job_uow.artifacts.get(bob, job.id, "summary.json") is None
            # Whatever the scope: an admin key is still one owner's.
            assert job_uow.jobs.get(job.id, MALLORY) is None

            # The owner sees them all, and so do the worker-side reads.
            assert job_uow.datasets.get(dataset.id, ALICE) == dataset
            assert job_uow.jobs.get(job.id, ALICE) == job
            assert job_uow.jobs.get_by_idempotency_key(ALICE, "k1") == job
            assert job_uow.failed_rows.list(ALICE, dataset.id) == [row]
            assert job_uow.job_events.list_for_job(ALICE, job.id) == [event]
            assert job_uow.artifacts.list_for_job(ALICE, job.id) == [artifact]
            assert job_uow.artifacts.get(ALICE, job.id, "summary.json") == artifact
            assert job_uow.datasets.get_for_worker(dataset.id) == dataset
            assert job_uow.jobs.get_for_worker(job.id) == job
            assert job_uow.datasets.get_for_worker(bobs_dataset.id) is not None
            assert job_uow.jobs.get_for_worker(bobs_job.id) is not None


class TestSqlJobRepositories(JobRepositoryContract):
    """SQLite and PostgreSQL, through the shared `uow` fixture."""

    @pytest.fixture
    def job_uow(self, uow: UnitOfWork) -> UnitOfWork:
        return uow

    def test_an_idempotent_add_rolls_back_with_its_transaction(self, job_uow: UnitOfWork) -> None:
        # A SAVEPOINT that opens a pysqlite transaction commits on release: keyed adds must not
        # escape a rollback, even as the first write of the block.
        dataset = add_dataset(job_uow)
        job = make_job(dataset.id, idempotency_key="k1")
        with job_uow:
            assert job_uow.jobs.get_by_idempotency_key(ALICE, "k1") is None
            job_uow.jobs.add(job)
            job_uow.rollback()
        with job_uow:
            assert job_uow.jobs.get_for_worker(job.id) is None
            job_uow.jobs.add(job)
            job_uow.commit()
        assert get_job(job_uow, job.id) == job


class TestFakeJobRepositories(JobRepositoryContract):
    """The in-memory fakes the unit tests use."""

    @pytest.fixture
    def job_uow(self) -> UnitOfWork:
        return FakeUnitOfWork()
