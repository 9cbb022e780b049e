"""The state machines of schemas/domain/lifecycle.py, enforced everywhere a status is written.

Every (from, to) pair of job statuses and of dataset statuses is tried: the pairs missing from
the tables are refused by the lifecycle functions (use_cases/lifecycle.py) and by the
repositories' `transition`, on the in-memory fakes, SQLite and PostgreSQL, without changing
the row; the pairs in the tables are accepted and record their event.
"""

import itertools
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from ports.repositories import UnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.lifecycle import (
    DATASET_TRANSITIONS,
    FINISHED_JOB_STATUSES,
    JOB_TRANSITIONS,
    IllegalTransition,
    check_dataset_transition,
    check_job_transition,
    job_transition_event,
)
from schemas.domain.records import (
    Dataset,
    DatasetFormat,
    DatasetStatus,
    Job,
    JobStatus,
    JobStep,
    KeyScope,
    Principal,
)
from tests.fakes import FakeUnitOfWork
from use_cases.lifecycle import (
    claim_job,
    complete_job,
    create_job,
    move_dataset,
    move_job,
    request_cancel,
)

J, D = JobStatus, DatasetStatus
ALICE = Principal(owner_id="alice", scope=KeyScope.read)
JOB_PAIRS = list(itertools.product(JobStatus, JobStatus))
DATASET_PAIRS = list(itertools.product(DatasetStatus, DatasetStatus))
ILLEGAL_JOB_PAIRS = [pair for pair in JOB_PAIRS if pair not in JOB_TRANSITIONS]
ILLEGAL_DATASET_PAIRS = [pair for pair in DATASET_PAIRS if pair not in DATASET_TRANSITIONS]
# Each legal job move with every event name that may record it.
LEGAL_JOB_MOVES = [(a, b, name) for (a, b), names in JOB_TRANSITIONS.items() for name in names]


def now() -> datetime:
    return datetime.now(UTC)


def pair_id(pair: tuple[Any, Any]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def add_dataset(uow: UnitOfWork, status: DatasetStatus) -> Dataset:
    dataset = Dataset(
        id=new_id(),
        owner_id=ALICE.owner_id,
        name="people.csv",
        format=DatasetFormat.csv,
        status=status,
        size_bytes=1,
        sha256="ab" * 32,
        storage_key="datasets/people.csv",
        created_at=now(),
        updated_at=now(),
    )
    with uow:
        uow.datasets.add(dataset)
        uow.commit()
    return dataset


def add_job(uow: UnitOfWork, dataset_id: UUID, status: JobStatus) -> Job:
    job = Job(
        id=new_id(),
        owner_id=ALICE.owner_id,
        dataset_id=dataset_id,
        status=status,
        steps=[JobStep(processor="metrics")],
        attempts=0 if status == J.queued else 1,
        created_at=now(),
        updated_at=now(),
    )
    with uow:
        uow.jobs.add(job)
        uow.commit()
    return job


def stored_job(uow: UnitOfWork, job_id: UUID) -> Job:
    with uow:
        job = uow.jobs.get_for_worker(job_id)
    assert job is not None
    return job


def stored_dataset(uow: UnitOfWork, dataset_id: UUID) -> Dataset:
    with uow:
        dataset = uow.datasets.get_for_worker(dataset_id)
    assert dataset is not None
    return dataset


def event_types(uow: UnitOfWork, job_id: UUID) -> list[str]:
    with uow:
        return [e.type for e in uow.job_events.list_for_job(ALICE, job_id)]


# --- the tables themselves ------------------------------------------------------------------


def test_the_tables_hold_the_documented_state_machines() -> None:
    assert {
        (J.queued, J.running): ("started",),
        (J.running, J.completed): ("completed",),
        (J.running, J.failed): ("failed",),
        (J.queued, J.failed): ("failed",),
        (J.running, J.cancelled): ("cancelled",),
        (J.queued, J.cancelled): ("cancelled",),
        (J.running, J.queued): ("retried", "requeued"),
    } == JOB_TRANSITIONS
    assert set(DATASET_TRANSITIONS) == {
        (D.uploaded, D.validating),
        (D.validating, D.ready),
        (D.validating, D.failed),
        (D.validating, D.uploaded),
    }
    assert (J.completed, J.failed, J.cancelled) == FINISHED_JOB_STATUSES
    assert len(ILLEGAL_JOB_PAIRS) == 25 - 7 and len(ILLEGAL_DATASET_PAIRS) == 16 - 4


@pytest.mark.parametrize("pair", ILLEGAL_JOB_PAIRS, ids=pair_id)
def test_the_check_refuses_an_illegal_job_move(pair: tuple[JobStatus, JobStatus]) -> None:
    with pytest.raises(IllegalTransition, match=f"from {pair[0].value} to {pair[1].value}"):
        job_transition_event(*pair)
    with pytest.raises(IllegalTransition):
        check_job_transition([pair[0]], pair[1])
    legal_from = next(a for a, b in JOB_TRANSITIONS if b == pair[1])
    with pytest.raises(IllegalTransition):  # one illegal source among legal ones is enough
        check_job_transition([legal_from, pair[0]], pair[1])


@pytest.mark.parametrize("pair", ILLEGAL_DATASET_PAIRS, ids=pair_id)
def test_the_check_refuses_an_illegal_dataset_move(
    pair: tuple[DatasetStatus, DatasetStatus],
) -> None:
    with pytest.raises(IllegalTransition, match=f"from {pair[0].value} to {pair[1].value}"):
        check_dataset_transition([pair[0]], pair[1])


def test_the_check_names_the_event_of_each_legal_job_move() -> None:
    for a, b, name in LEGAL_JOB_MOVES:
        assert job_transition_event(a, b, name) == name
        check_job_transition([a], b)
    assert job_transition_event(J.queued, J.running) == "started"
    with pytest.raises(IllegalTransition, match="say which"):  # retried or requeued
        job_transition_event(J.running, J.queued)
    with pytest.raises(IllegalTransition, match="not 'requeued'"):
        job_transition_event(J.running, J.failed, "requeued")
    for before, after in DATASET_TRANSITIONS:
        check_dataset_transition([before], after)


# --- the writers, on every backend ----------------------------------------------------------


class LifecycleContract:
    """Subclasses provide `lc_uow`: a unit of work on a fresh store."""

    def test_illegal_job_moves_are_refused_by_the_lifecycle_and_the_repository(
        self, lc_uow: UnitOfWork
    ) -> None:
        dataset = add_dataset(lc_uow, D.ready)
        for a, b in ILLEGAL_JOB_PAIRS:
            job = add_job(lc_uow, dataset.id, a)
            with lc_uow:
                with pytest.raises(IllegalTransition):
                    move_job(lc_uow, job.id, a, b)
                with pytest.raises(IllegalTransition):
                    lc_uow.jobs.transition(job.id, [a], b)
                with pytest.raises(IllegalTransition):
                    lc_uow.jobs.transition(job.id, [a], b, attempt=job.attempts)
                lc_uow.commit()  # nothing was written: the transaction is still usable
            assert stored_job(lc_uow, job.id) == job, pair_id((a, b))
            assert event_types(lc_uow, job.id) == [], pair_id((a, b))

    def test_legal_job_moves_are_accepted_by_the_repository(self, lc_uow: UnitOfWork) -> None:
        dataset = add_dataset(lc_uow, D.ready)
        for a, b in JOB_TRANSITIONS:
            job = add_job(lc_uow, dataset.id, a)
            with lc_uow:
                assert lc_uow.jobs.transition(job.id, [a], b, attempt=job.attempts) is True
                lc_uow.commit()
            assert stored_job(lc_uow, job.id).status == b, pair_id((a, b))

    def test_legal_job_moves_are_accepted_by_the_lifecycle_with_their_event(
        self, lc_uow: UnitOfWork
    ) -> None:
        dataset = add_dataset(lc_uow, D.ready)
        for a, b, name in LEGAL_JOB_MOVES:
            job = add_job(lc_uow, dataset.id, a)
            with lc_uow:
                if (a, b) == (J.queued, J.running):
                    assert claim_job(lc_uow, job.id, "worker-1") is not None
                elif (a, b) == (J.running, J.completed):
                    assert complete_job(lc_uow, job, {"steps": []}, [])
                else:
                    assert move_job(lc_uow, job.id, a, b, attempt=job.attempts, event_type=name)
                lc_uow.commit()
            stored = stored_job(lc_uow, job.id)
            assert stored.status == b, pair_id((a, b))
            assert event_types(lc_uow, job.id) == [name], pair_id((a, b))
            if b in FINISHED_JOB_STATUSES:
                assert stored.finished_at is not None

    def test_moves_with_a_writer_of_their_own_are_refused_by_move_job(
        self, lc_uow: UnitOfWork
    ) -> None:
        dataset = add_dataset(lc_uow, D.ready)
        for (a, b), writer in {
            (J.queued, J.running): "claim_job",
            (J.running, J.completed): "complete_job",
        }.items():
            job = add_job(lc_uow, dataset.id, a)
            with lc_uow, pytest.raises(IllegalTransition, match=writer):
                move_job(lc_uow, job.id, a, b)
            assert stored_job(lc_uow, job.id) == job

    def test_a_compare_and_set_that_does_not_match_writes_no_event(
        self, lc_uow: UnitOfWork
    ) -> None:
        dataset = add_dataset(lc_uow, D.ready)
        running = add_job(lc_uow, dataset.id, J.running)
        with lc_uow:
            assert not move_job(lc_uow, running.id, J.queued, J.cancelled)  # it is running
            assert not move_job(lc_uow, running.id, J.running, J.failed, attempt=2)  # stale
            assert claim_job(lc_uow, running.id, "worker-2") is None
            lc_uow.commit()
        assert stored_job(lc_uow, running.id) == running
        assert event_types(lc_uow, running.id) == []

    def test_create_and_request_cancel_record_their_events(self, lc_uow: UnitOfWork) -> None:
        dataset = add_dataset(lc_uow, D.ready)
        job = Job(
            id=new_id(),
            owner_id=ALICE.owner_id,
            dataset_id=dataset.id,
            status=J.queued,
            steps=[JobStep(processor="metrics")],
            created_at=now(),
            updated_at=now(),
        )
        with lc_uow:
            with pytest.raises(IllegalTransition):  # a job is born queued
                create_job(lc_uow, job.model_copy(update={"status": J.running}))
            create_job(lc_uow, job)
            assert request_cancel(lc_uow, job.id) is True
            lc_uow.commit()
        assert event_types(lc_uow, job.id) == ["created", "cancel_requested"]
        finished = add_job(lc_uow, dataset.id, J.completed)
        with lc_uow:
            assert request_cancel(lc_uow, finished.id) is False
            lc_uow.commit()
        assert event_types(lc_uow, finished.id) == []

    def test_illegal_dataset_moves_are_refused_by_the_lifecycle_and_the_repository(
        self, lc_uow: UnitOfWork
    ) -> None:
        for a, b in ILLEGAL_DATASET_PAIRS:
            dataset = add_dataset(lc_uow, a)
            with lc_uow:
                with pytest.raises(IllegalTransition):
                    move_dataset(lc_uow, dataset.id, a, b)
                with pytest.raises(IllegalTransition):
                    lc_uow.datasets.transition(dataset.id, [a], b)
                with pytest.raises(ValueError):  # nor around it
                    lc_uow.datasets.update(dataset.id, status=b)
                lc_uow.commit()
            assert stored_dataset(lc_uow, dataset.id) == dataset, pair_id((a, b))

    def test_legal_dataset_moves_are_accepted(self, lc_uow: UnitOfWork) -> None:
        for a, b in DATASET_TRANSITIONS:
            by_lifecycle, by_repository = add_dataset(lc_uow, a), add_dataset(lc_uow, a)
            with lc_uow:
                assert move_dataset(lc_uow, by_lifecycle.id, a, b) is True
                assert lc_uow.datasets.transition(by_repository.id, [a], b) is True
                assert move_dataset(lc_uow, new_id(), a, b) is False
                lc_uow.commit()
            assert stored_dataset(lc_uow, by_lifecycle.id).status == b, pair_id((a, b))
            assert stored_dataset(lc_uow, by_repository.id).status == b, pair_id((a, b))


class TestSqlLifecycle(LifecycleContract):
    """SQLite and PostgreSQL, through the shared `uow` fixture."""

    @pytest.fixture
    def lc_uow(self, uow: UnitOfWork) -> UnitOfWork:
        return uow


class TestFakeLifecycle(LifecycleContract):
    """The in-memory fakes the unit tests use."""

    @pytest.fixture
    def lc_uow(self) -> UnitOfWork:
        return FakeUnitOfWork()
