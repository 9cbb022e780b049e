"""Job streams on a real database: PostgreSQL wakes them with NOTIFY, SQLite polls.

The listener (services/adapters/wakeups/postgres.py) and the NOTIFY the job-event repository
sends in the inserting transaction, then GET /jobs/{id}/stream over both backends.
"""

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from db.engine import make_engine, make_session_factory
from main import make_job_wakeups
from ports.context import Context
from ports.repositories import UnitOfWork
from ports.wakeups import JobWakeups
from repositories.jobs import JOB_EVENTS_CHANNEL
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import DEFAULT_OWNER, JobEvent, JobStatus, KeyScope
from schemas.settings import Settings
from services.adapters.wakeups.polling import PollingJobWakeups
from services.adapters.wakeups.postgres import PostgresJobWakeups
from services.adapters.wakeups.sqlite_file import SqliteFileWakeups
from tests.fake_webhooks import FakeWebhookSender
from tests.fakes import FakeFetcher, FakeQueue, FakeStorage
from tests.fixtures.databases import postgres_dsn
from tests.integration.test_job_repositories_contract import add_dataset, add_job
from use_cases.keys import create_key

# Far longer than any wake-up should take: a stream that needed the poll would be this late.
SLOW_POLL_S = 10.0


def conninfo(url: str) -> str:
    return postgres_dsn(url.rsplit("/", 1)[1])


@pytest.fixture
def new_uow(migrated_database_url: str) -> Iterator[Callable[[], UnitOfWork]]:
    engine = make_engine(migrated_database_url)
    factory = make_session_factory(engine)
    try:
        yield lambda: SqlUnitOfWork(factory)
    finally:
        engine.dispose()


def add_event(new_uow: Callable[[], UnitOfWork], job_id: UUID, type_: str, commit=True) -> None:
    with new_uow() as uow:
        uow.job_events.add(
            JobEvent(job_id=job_id, type=type_, payload={}, created_at=datetime.now(UTC))
        )
        if type_ == "completed":
            uow.jobs.transition(job_id, [JobStatus.queued], JobStatus.running)
            uow.jobs.transition(job_id, [JobStatus.running], JobStatus.completed)
        if commit:
            uow.commit()


def queued_job(new_uow: Callable[[], UnitOfWork]) -> UUID:
    uow = new_uow()
    dataset = add_dataset(uow, owner_id=DEFAULT_OWNER)
    job = add_job(uow, dataset.id, owner_id=DEFAULT_OWNER)
    add_event(new_uow, job.id, "created")
    return job.id


# --- the listener ------------------------------------------------------------------------


@pytest.mark.postgres
def test_notify_wakes_only_the_job_s_subscribers_and_only_after_commit(postgres_migrated_url):
    engine = make_engine(postgres_migrated_url)
    new_uow = lambda: SqlUnitOfWork(make_session_factory(engine))  # noqa: E731
    job_id, other_id = queued_job(new_uow), queued_job(new_uow)
    wakeups = PostgresJobWakeups(conninfo(postgres_migrated_url), JOB_EVENTS_CHANNEL)

    async def scenario() -> None:
        async with wakeups.subscribe(job_id) as mine, wakeups.subscribe(other_id) as other:
            while not wakeups.listening:
                await asyncio.sleep(0.01)
            await mine.wait(0.2)  # the wake-up every subscriber gets when the listener connects
            await other.wait(0.2)
            uow = new_uow()
            with uow:  # inserted, not committed: nobody is woken
                uow.job_events.add(
                    JobEvent(
                        job_id=job_id, type="progress", payload={}, created_at=datetime.now(UTC)
                    )
                )
                assert await mine.wait(0.3) is False
                started = time.perf_counter()
                await asyncio.to_thread(uow.commit)
            assert await mine.wait(2.0) is True
            assert time.perf_counter() - started < 0.5
            assert await other.wait(0.3) is False
            with uow:  # one statement with events of both jobs wakes both
                uow.job_events.add_many(
                    [
                        JobEvent(job_id=j, type="progress", created_at=datetime.now(UTC))
                        for j in (job_id, other_id)
                    ]
                )
                await asyncio.to_thread(uow.commit)
            assert await mine.wait(2.0) is True
            assert await other.wait(2.0) is True
        await wakeups.aclose()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_listener_reconnects_after_its_connection_is_killed(postgres_migrated_url):
    engine = make_engine(postgres_migrated_url)
    new_uow = lambda: SqlUnitOfWork(make_session_factory(engine))  # noqa: E731
    job_id = queued_job(new_uow)
    dsn = conninfo(postgres_migrated_url)
    wakeups = PostgresJobWakeups(dsn, JOB_EVENTS_CHANNEL)

    def kill_listener() -> int:
        with psycopg.connect(dsn, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'assay-job-wakeups' AND datname = current_database()"
            ).fetchall()
        return len(rows)

    async def scenario() -> None:
        async with wakeups.subscribe(job_id) as subscription:
            while not wakeups.listening:
                await asyncio.sleep(0.01)
            await subscription.wait(0.2)
            assert await asyncio.to_thread(kill_listener) == 1
            # An event committed while the listener is down is not lost for the reader: the
            # reconnect wakes every subscriber once.
            await asyncio.to_thread(add_event, new_uow, job_id, "progress")
            assert await subscription.wait(5.0) is True
            deadline = time.monotonic() + 5
            while wakeups.connects < 2:
                assert time.monotonic() < deadline, "the listener did not reconnect"
                await asyncio.sleep(0.02)
            while await subscription.wait(0.2):  # drain the reconnect's wake-up
                pass
            started = time.perf_counter()
            await asyncio.to_thread(add_event, new_uow, job_id, "progress")
            assert await subscription.wait(2.0) is True
            assert time.perf_counter() - started < 0.5
        await wakeups.aclose()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


# --- the stream over each backend --------------------------------------------------------


def app_for(new_uow: Callable[[], UnitOfWork], wakeups: JobWakeups, tmp_path: Path) -> TestClient:
    context = Context(
        settings=Settings(data_dir=tmp_path / "data"),
        new_uow=new_uow,
        datasets_storage=FakeStorage(),
        results_storage=FakeStorage(),
        queue=FakeQueue(),
        fetcher=FakeFetcher(),
        webhook_sender=FakeWebhookSender(),
    )
    _, secret = create_key(new_uow(), owner_id=DEFAULT_OWNER, scope=KeyScope.read)
    return TestClient(create_app(context, wakeups), headers={"Authorization": f"Bearer {secret}"})


def production_wakeups(url: str) -> JobWakeups:
    """What `assay api` runs with, but with a slow poll far above the expected delay."""
    if url.startswith("postgresql"):
        return PostgresJobWakeups(conninfo(url), JOB_EVENTS_CHANNEL, poll_interval_s=SLOW_POLL_S)
    return make_job_wakeups(Settings(database_url=url))


def read_stream(client: TestClient, job_id: UUID, last_event_id: str | None = None):
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = client.get(f"/api/v1/jobs/{job_id}/stream", headers=headers)
    assert response.status_code == 200
    blocks = [b for b in response.text.split("\n\n") if b.strip() and not b.startswith(":")]
    return [dict(line.split(": ", 1) for line in block.splitlines()) for block in blocks]


def test_sqlite_streams_watch_the_file_and_an_in_memory_database_polls():
    assert isinstance(make_job_wakeups(Settings(database_url="sqlite:///x.db")), SqliteFileWakeups)
    for url in ("sqlite://", "sqlite:///file:x.db?mode=ro&uri=true"):
        wakeups = make_job_wakeups(Settings(database_url=url))
        assert isinstance(wakeups, PollingJobWakeups), url
        assert wakeups.poll_interval_s <= 0.05


def test_a_commit_to_the_sqlite_file_wakes_a_waiter_and_silence_does_not(
    sqlite_migrated_template, tmp_path
):
    path = tmp_path / "assay.db"
    shutil.copyfile(sqlite_migrated_template, path)
    engine = make_engine(f"sqlite:///{path}")
    new_uow = lambda: SqlUnitOfWork(make_session_factory(engine))  # noqa: E731
    job_id = queued_job(new_uow)
    wakeups = SqliteFileWakeups(path, poll_interval_s=SLOW_POLL_S)

    async def scenario() -> tuple[bool, bool, float, bool, bool]:
        async with wakeups.subscribe(job_id) as subscription:
            quiet = await subscription.wait(0.2)
            timer = threading.Timer(0.1, add_event, (new_uow, job_id, "progress"))
            started = time.perf_counter()
            timer.start()
            woken = await subscription.wait(SLOW_POLL_S)
            waited = time.perf_counter() - started
            timer.join()
            # A change may be seen before its commit is: the next wait wakes once more.
            again = await subscription.wait(SLOW_POLL_S)
            quiet_after = await subscription.wait(0.2)
            return quiet, woken, waited, again, quiet_after

    try:
        quiet, woken, waited, again, quiet_after = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert not quiet and woken and again and not quiet_after
    assert waited < 0.5, f"woken {waited:.3f} s after the wait began (commit at 0.1 s)"


def test_a_stream_gets_a_new_event_well_under_the_slow_poll(
    migrated_database_url, new_uow, tmp_path
):
    job_id = queued_job(new_uow)
    committed: list[float] = []

    def finish() -> None:
        add_event(new_uow, job_id, "progress")
        add_event(new_uow, job_id, "completed")
        committed.append(time.perf_counter())

    with app_for(new_uow, production_wakeups(migrated_database_url), tmp_path) as client:
        timer = threading.Timer(0.5, finish)
        timer.start()
        try:
            events = read_stream(client, job_id)
        finally:
            timer.join()
        delay = time.perf_counter() - committed[0]
        assert [e["event"] for e in events] == ["created", "progress", "completed"]
        assert delay < 0.5, f"the stream took {delay:.3f} s after the commit"

        # Reconnecting after the first event replays exactly the rest, then ends.
        resumed = read_stream(client, job_id, last_event_id=events[0]["id"])
        assert [e["id"] for e in resumed] == [e["id"] for e in events[1:]]


@pytest.mark.postgres
def test_a_stream_polls_when_notifications_never_come(postgres_migrated_url, tmp_path):
    engine = make_engine(postgres_migrated_url)
    new_uow = lambda: SqlUnitOfWork(make_session_factory(engine))  # noqa: E731
    job_id = queued_job(new_uow)
    # A listener that cannot connect: the stream must still end, through its poll.
    deaf = PostgresJobWakeups(
        "host=127.0.0.1 port=1 user=postgres dbname=postgres connect_timeout=1",
        JOB_EVENTS_CHANNEL,
        poll_interval_s=0.2,
    )
    try:
        with app_for(new_uow, deaf, tmp_path) as client:
            timer = threading.Timer(0.3, add_event, (new_uow, job_id, "completed"))
            timer.start()
            started = time.perf_counter()
            try:
                events = read_stream(client, job_id)
            finally:
                timer.join()
            assert events[-1]["event"] == "completed"
            assert time.perf_counter() - started < 3
            assert not deaf.listening
    finally:
        engine.dispose()


def test_a_long_history_is_replayed_without_waiting_between_reads(
    migrated_database_url, new_uow, tmp_path
):
    job_id = queued_job(new_uow)
    with new_uow() as uow:  # a long job's history: more events than one read returns
        for _ in range(1200):
            uow.job_events.add(
                JobEvent(job_id=job_id, type="progress", payload={}, created_at=datetime.now(UTC))
            )
        uow.commit()
    add_event(new_uow, job_id, "completed")
    with app_for(new_uow, production_wakeups(migrated_database_url), tmp_path) as client:
        started = time.perf_counter()
        events = read_stream(client, job_id)
        assert len(events) == 1202 and events[-1]["event"] == "completed"
        assert time.perf_counter() - started < SLOW_POLL_S / 2  # not one poll per 500 events
