"""The repository and unit-of-work contract, on SQLite and PostgreSQL via the `uow` fixture."""

import hashlib
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from db.engine import make_engine, make_session_factory
from ports.repositories import DatabaseUnavailable, UnitOfWork
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.records import (
    ApiKey,
    Artifact,
    ColumnInfo,
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


def now() -> datetime:
    return datetime.now(UTC)


def make_dataset(**overrides: Any) -> Dataset:
    values: dict[str, Any] = {
        "id": new_id(),
        "owner_id": OWNER,
        "name": "people.csv",
        "format": DatasetFormat.csv,
        "status": DatasetStatus.uploaded,
        "size_bytes": 1234,
        "sha256": "ab" * 32,
        "storage_key": "datasets/people.csv",
        "created_at": now(),
        "updated_at": now(),
    }
    return Dataset(**(values | overrides))


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


def add_dataset(uow: UnitOfWork, **overrides: Any) -> Dataset:
    dataset = make_dataset(**overrides)
    with uow:
        uow.datasets.add(dataset)
        uow.commit()
    return dataset


def add_job(uow: UnitOfWork, dataset_id: UUID | None, **overrides: Any) -> Job:
    job = make_job(dataset_id, **overrides)
    with uow:
        uow.jobs.add(job)
        uow.commit()
    return job


def failed_row(dataset_id: UUID, line: int) -> FailedRow:
    return FailedRow(dataset_id=dataset_id, line_number=line, raw_text=f"x,{line}", reason="bad")


# --- datasets --------------------------------------------------------------------------------


def test_dataset_add_get_and_owner_filter(uow: UnitOfWork) -> None:
    dataset = add_dataset(
        uow,
        columns=[ColumnInfo(name="age", type="int64", null_count=2)],
        row_count=10,
    )
    with uow:
        assert uow.datasets.get_for_worker(dataset.id) == dataset
        assert uow.datasets.get(dataset.id, ALICE) == dataset
        assert uow.datasets.get(dataset.id, MALLORY) is None
        assert uow.datasets.get(new_id(), ALICE) is None
        assert uow.datasets.get_for_worker(new_id()) is None


def test_dataset_list_newest_first_with_status_filter_and_cursor(uow: UnitOfWork) -> None:
    # new_id() orders by millisecond only; sorting fixes the creation order within a millisecond.
    ids = sorted(new_id() for _ in range(5))
    statuses = [DatasetStatus.ready, DatasetStatus.failed] * 2 + [DatasetStatus.ready]
    with uow:
        for dataset_id, status in zip(ids, statuses, strict=True):
            uow.datasets.add(make_dataset(id=dataset_id, status=status))
        uow.datasets.add(make_dataset(owner_id="bob"))
        uow.commit()

    seen: list[UUID] = []
    before: UUID | None = None
    with uow:
        while page := uow.datasets.list(ALICE, before=before, limit=2):
            assert len(page) <= 2
            seen += [dataset.id for dataset in page]
            before = page[-1].id
    assert seen == ids[::-1]

    with uow:
        ready = uow.datasets.list(ALICE, status=DatasetStatus.ready)
        first_page = uow.datasets.list(ALICE, status=DatasetStatus.ready, limit=2)
        rest = uow.datasets.list(ALICE, status=DatasetStatus.ready, before=first_page[-1].id)
    assert [d.id for d in ready] == [ids[4], ids[2], ids[0]]
    assert [d.id for d in first_page + rest] == [ids[4], ids[2], ids[0]]


def test_dataset_update_sets_fields_and_updated_at(uow: UnitOfWork) -> None:
    long_ago = now() - timedelta(days=1)
    dataset = add_dataset(uow, updated_at=long_ago)
    columns = [ColumnInfo(name="age", type="int64", null_count=0)]
    with uow:
        uow.datasets.update(dataset.id, row_count=7, columns=columns)
        with pytest.raises(ValueError, match="transition"):  # a status has its own path
            uow.datasets.update(dataset.id, status=DatasetStatus.ready)
        uow.commit()
    with uow:
        stored = uow.datasets.get_for_worker(dataset.id)
    assert stored is not None
    assert (stored.row_count, stored.columns, stored.status) == (7, columns, DatasetStatus.uploaded)
    assert stored.updated_at > long_ago
    assert stored.created_at == dataset.created_at


def test_dataset_transition_is_compare_and_set(uow: UnitOfWork) -> None:
    dataset = add_dataset(uow, updated_at=now() - timedelta(hours=1))
    uploaded, validating = [DatasetStatus.uploaded], DatasetStatus.validating
    with uow:
        assert uow.datasets.transition(dataset.id, uploaded, validating) is True
        assert uow.datasets.transition(dataset.id, uploaded, validating) is False
        assert uow.datasets.transition(new_id(), uploaded, validating) is False
        failed = uow.datasets.transition(
            dataset.id,
            [DatasetStatus.validating],
            DatasetStatus.failed,
            error="not a CSV",
        )
        assert failed is True
        uow.commit()
    with uow:
        stored = uow.datasets.get_for_worker(dataset.id)
    assert stored is not None
    assert (stored.status, stored.error) == (DatasetStatus.failed, "not a CSV")
    assert stored.updated_at > dataset.updated_at


def test_dataset_list_stale(uow: UnitOfWork) -> None:
    hour_ago = now() - timedelta(hours=1)
    stuck = add_dataset(uow, status=DatasetStatus.validating, updated_at=hour_ago)
    add_dataset(uow, status=DatasetStatus.validating)  # recent
    add_dataset(uow, status=DatasetStatus.ready, updated_at=hour_ago)  # finished
    with uow:
        stale = uow.datasets.list_stale(
            [DatasetStatus.uploaded, DatasetStatus.validating], now() - timedelta(minutes=10)
        )
    assert [dataset.id for dataset in stale] == [stuck.id]


def test_dataset_delete_removes_its_failed_rows(uow: UnitOfWork) -> None:
    doomed, kept = add_dataset(uow), add_dataset(uow)
    with uow:
        uow.failed_rows.add_many(failed_row(doomed.id, line) for line in (1, 2, 3))
        uow.failed_rows.add_many([failed_row(kept.id, 1)])
        uow.commit()
    with uow:
        uow.datasets.delete(doomed.id)
        uow.commit()
    with uow:
        assert uow.datasets.get_for_worker(doomed.id) is None
        assert uow.failed_rows.list(ALICE, doomed.id) == []
        assert [row.line_number for row in uow.failed_rows.list(ALICE, kept.id)] == [1]


def test_dataset_delete_keeps_finished_jobs_with_null_dataset(uow: UnitOfWork) -> None:
    dataset = add_dataset(uow)
    job = add_job(uow, dataset.id, status=JobStatus.completed)
    with uow:
        uow.datasets.delete(dataset.id)
        uow.commit()
    with uow:
        stored = uow.jobs.get_for_worker(job.id)
    assert stored is not None
    assert stored.dataset_id is None  # ON DELETE SET NULL


# --- failed rows ------------------------------------------------------------------------------


def test_failed_rows_bulk_insert_and_line_order_paging(uow: UnitOfWork) -> None:
    dataset = add_dataset(uow)
    lines = list(range(1, 2501))
    random.Random(7).shuffle(lines)
    with uow:
        assert uow.failed_rows.add_many(failed_row(dataset.id, line) for line in lines) == 2500
        uow.commit()

    seen: list[int] = []
    with uow:
        while page := uow.failed_rows.list(
            ALICE, dataset.id, after_line=seen[-1] if seen else 0, limit=1000
        ):
            seen += [row.line_number for row in page]
        assert uow.failed_rows.list(ALICE, dataset.id, limit=1)[0] == failed_row(dataset.id, 1)
    assert seen == list(range(1, 2501))

    with uow:
        uow.failed_rows.delete_for_dataset(dataset.id)
        assert uow.failed_rows.list(ALICE, dataset.id) == []


# --- jobs, events, artifacts ------------------------------------------------------------------


def test_jobs_add_get_and_count_active(uow: UnitOfWork) -> None:
    dataset, other = add_dataset(uow), add_dataset(uow)
    queued = add_job(uow, dataset.id, idempotency_key="k1", request_hash="h" * 64)
    add_job(uow, dataset.id, status=JobStatus.running, heartbeat_at=now(), attempts=1)
    finished = add_job(
        uow,
        dataset.id,
        status=JobStatus.failed,
        error={"type": "DataError", "message": "bad column", "step": 0},
        result={"rows": 3, "nested": {"a": [1, 2.5, None]}},
        finished_at=now(),
    )
    add_job(uow, other.id)
    with uow:
        assert uow.jobs.get_for_worker(queued.id) == queued
        assert uow.jobs.get(finished.id, ALICE) == finished
        assert uow.jobs.get(queued.id, MALLORY) is None
        assert uow.jobs.get(new_id(), ALICE) is None
        assert uow.jobs.get_for_worker(new_id()) is None
        assert uow.jobs.count_active_for_dataset(dataset.id) == 2
        assert uow.jobs.count_active_for_dataset(new_id()) == 0


def test_job_events_ids_increase_and_page_after_id(uow: UnitOfWork) -> None:
    dataset = add_dataset(uow)
    job, other = add_job(uow, dataset.id), add_job(uow, dataset.id)
    with uow:
        events = [
            uow.job_events.add(
                JobEvent(job_id=job.id, type=kind, payload={"n": n}, created_at=now())
            )
            for n, kind in enumerate(["created", "enqueued", "started"])
        ]
        uow.job_events.add(JobEvent(job_id=other.id, type="created", created_at=now()))
        uow.commit()
    ids = [event.id for event in events if isinstance(event.id, int)]
    assert len(ids) == len(events)  # every event got an integer id
    assert ids == sorted(ids) and len(set(ids)) == 3

    with uow:
        assert uow.job_events.list_for_job(ALICE, job.id) == events
        assert uow.job_events.list_for_job(ALICE, job.id, after_id=events[0].id or 0) == events[1:]
        assert uow.job_events.list_for_job(ALICE, job.id, after_id=events[0].id or 0, limit=1) == [
            events[1]
        ]
        assert uow.job_events.list_for_job(ALICE, job.id, after_id=events[-1].id or 0) == []


def test_artifacts_add_and_list_by_name(uow: UnitOfWork) -> None:
    job = add_job(uow, add_dataset(uow).id)
    artifacts = [
        Artifact(
            job_id=job.id,
            name=name,
            content_type="text/csv",
            size_bytes=10,
            sha256="cd" * 32,
            storage_key=f"jobs/{job.id}/1/{name}",
            created_at=now(),
        )
        for name in ("summary.json", "flagged.csv")
    ]
    with uow:
        for artifact in artifacts:
            uow.artifacts.add(artifact)
        uow.commit()
    with uow:
        assert uow.artifacts.list_for_job(ALICE, job.id) == artifacts[::-1]
        assert uow.artifacts.list_for_job(ALICE, new_id()) == []


# --- unit of work -----------------------------------------------------------------------------


def test_uncommitted_changes_roll_back(uow: UnitOfWork) -> None:
    dataset = make_dataset()
    with uow:
        uow.datasets.add(dataset)
        assert uow.datasets.get_for_worker(dataset.id) is not None  # visible inside the block
    with uow:
        assert uow.datasets.get_for_worker(dataset.id) is None
        uow.datasets.add(dataset)
        uow.rollback()
        assert uow.datasets.get_for_worker(dataset.id) is None


def test_exception_in_block_rolls_back(uow: UnitOfWork) -> None:
    dataset = make_dataset()
    with pytest.raises(RuntimeError), uow:
        uow.datasets.add(dataset)
        raise RuntimeError("boom")
    with uow:
        assert uow.datasets.get_for_worker(dataset.id) is None


def test_timestamps_come_back_aware_utc(uow: UnitOfWork) -> None:
    # A non-UTC offset on the way in must come back as the same instant in UTC.
    plus_two = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    dataset = add_dataset(uow, created_at=plus_two, updated_at=plus_two)
    job = add_job(uow, dataset.id, heartbeat_at=plus_two)
    with uow:
        stored = uow.datasets.get_for_worker(dataset.id)
        stored_job = uow.jobs.get_for_worker(job.id)
    assert stored is not None and stored_job is not None
    for value in (stored.created_at, stored.updated_at, stored_job.heartbeat_at):
        assert value is not None
        assert value.tzinfo == UTC
        assert value == plus_two
        assert value.hour == 10


def test_naive_datetimes_are_refused(uow: UnitOfWork) -> None:
    with pytest.raises(Exception, match="naive datetime"), uow:
        uow.datasets.add(make_dataset(created_at=datetime(2024, 1, 1)))


def test_check_passes_on_a_live_database(uow: UnitOfWork) -> None:
    uow.check()


def test_check_raises_database_unavailable() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    try:
        with pytest.raises(DatabaseUnavailable):
            SqlUnitOfWork(make_session_factory(engine)).check()
    finally:
        engine.dispose()


def test_count_by_status(uow: UnitOfWork) -> None:
    ready = add_dataset(uow, status=DatasetStatus.ready)
    add_dataset(uow, status=DatasetStatus.ready)
    add_dataset(uow, status=DatasetStatus.failed)
    add_job(uow, ready.id, status=JobStatus.queued)
    add_job(uow, ready.id, status=JobStatus.completed)
    add_job(uow, ready.id, status=JobStatus.completed)
    with uow:
        assert uow.datasets.count_by_status() == {"ready": 2, "failed": 1}
        assert uow.jobs.count_by_status() == {"queued": 1, "completed": 2}


def test_total_size_bytes_sums_the_owners_datasets(uow: UnitOfWork) -> None:
    with uow:
        assert uow.datasets.total_size_bytes(ALICE) == 0
    add_dataset(uow, size_bytes=1000)
    add_dataset(uow, size_bytes=2**40, status=DatasetStatus.failed)  # past 32 bits
    add_dataset(uow, owner_id=MALLORY.owner_id, size_bytes=7)
    with uow:
        assert uow.datasets.total_size_bytes(ALICE) == 1000 + 2**40
        assert uow.datasets.total_size_bytes(MALLORY) == 7


# --- API keys ---------------------------------------------------------------------------------


def make_key(owner_id: str = OWNER, **overrides: Any) -> ApiKey:
    secret = f"assay_{new_id().hex}"
    values: dict[str, Any] = {
        "id": new_id(),
        "owner_id": owner_id,
        "name": "laptop",
        "scope": KeyScope.write,
        "prefix": secret[:12],
        "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
        "created_at": now(),
    }
    return ApiKey(**(values | overrides))


def add_keys(uow: UnitOfWork, *keys: ApiKey) -> None:
    with uow:
        for key in keys:
            uow.api_keys.add(key)
        uow.commit()


class ApiKeyRepositoryContract:
    """The contract; subclasses provide the `key_uow` fixture."""

    def test_add_then_find_by_hash_and_get(self, key_uow: UnitOfWork) -> None:
        key, other = make_key(scope=KeyScope.read), make_key(name=None, scope=KeyScope.admin)
        add_keys(key_uow, key, other)
        with key_uow:
            assert key_uow.api_keys.find_by_hash_for_authentication(key.secret_hash) == key
            assert key_uow.api_keys.find_by_hash_for_authentication(other.secret_hash) == other
            assert key_uow.api_keys.find_by_hash_for_authentication("0" * 64) is None
            assert key_uow.api_keys.get(key.id) == key
            assert key_uow.api_keys.get(new_id()) is None

    def test_revoke_once_then_false(self, key_uow: UnitOfWork) -> None:
        key, kept = make_key(), make_key()
        add_keys(key_uow, key, kept)
        when = now()
        with key_uow:
            assert key_uow.api_keys.revoke(key.id, when) is True
            assert key_uow.api_keys.revoke(key.id, when + timedelta(seconds=1)) is False
            assert key_uow.api_keys.revoke(new_id(), when) is False
            key_uow.commit()
        with key_uow:
            assert key_uow.api_keys.revoke(key.id, now()) is False  # in a later transaction too
            stored = key_uow.api_keys.get(key.id)
            # Still found by its hash (authentication tells revoked from unknown), kept as revoked.
            found = key_uow.api_keys.find_by_hash_for_authentication(key.secret_hash)
            assert key_uow.api_keys.get(kept.id) == kept
        assert stored is not None and stored.revoked_at == when
        assert found == stored

    def test_list_all_oldest_first_and_by_owner(self, key_uow: UnitOfWork) -> None:
        start = now() - timedelta(hours=1)
        first = make_key(created_at=start)
        bobs = make_key("bob", created_at=start + timedelta(seconds=1))
        second = make_key(created_at=start + timedelta(seconds=2))
        add_keys(key_uow, second, bobs, first)
        with key_uow:
            assert [k.id for k in key_uow.api_keys.list_all()] == [first.id, bobs.id, second.id]
            assert key_uow.api_keys.list_all(OWNER) == [first, second]
            assert key_uow.api_keys.list_all("bob") == [bobs]
            assert key_uow.api_keys.list_all("carol") == []
            # Pages: at most `limit`, continuing after the last key of the previous page.
            assert key_uow.api_keys.list_all(limit=2) == [first, bobs]
            assert key_uow.api_keys.list_all(after=bobs.id, limit=2) == [second]
            assert key_uow.api_keys.list_all(OWNER, after=first.id) == [second]
            assert key_uow.api_keys.list_all(after=second.id) == []

    def test_mark_used_records_when(self, key_uow: UnitOfWork) -> None:
        key, other = make_key(), make_key()
        add_keys(key_uow, key, other)
        when = now()
        with key_uow:
            key_uow.api_keys.mark_used(key.id, when)
            key_uow.api_keys.mark_used(new_id(), when)  # nothing to mark
            key_uow.commit()
        later = when + timedelta(minutes=5)
        with key_uow:
            stored = key_uow.api_keys.get(key.id)
            assert stored == key.model_copy(update={"last_used_at": when})
            assert key_uow.api_keys.get(other.id) == other
            key_uow.api_keys.mark_used(key.id, later)
            key_uow.commit()
        with key_uow:
            stored = key_uow.api_keys.get(key.id)
        assert stored is not None and stored.last_used_at == later


class TestSqlApiKeys(ApiKeyRepositoryContract):
    """SQLite and PostgreSQL, through the shared `uow` fixture."""

    @pytest.fixture
    def key_uow(self, uow: UnitOfWork) -> UnitOfWork:
        return uow


class TestFakeApiKeys(ApiKeyRepositoryContract):
    """The in-memory fake the unit tests use."""

    @pytest.fixture
    def key_uow(self) -> UnitOfWork:
        return FakeUnitOfWork()
