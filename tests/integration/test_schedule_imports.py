"""A source_url schedule end to end: real downloads from a loopback server, real validation."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from main import make_fetcher
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import DatasetStatus, KeyScope, Principal
from schemas.domain.schedules import RunOutcome, ScheduleAction
from schemas.settings import Settings
from services.adapters.storage.local import LocalObjectStorage
from tests.fakes import FakeQueue
from tests.fixtures.http_servers import Served, body, serve
from use_cases.imports import import_dataset
from use_cases.schedules import create_schedule, run_due_schedules

ME = Principal(owner_id="default", scope=KeyScope.write)
T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
DAY_1 = b"city,temperature\nOslo,3.5\nLima,19.25\n"
DAY_2 = b"city,temperature\nOslo,4.0\nLima,18.5\nCairo,22.0\n"


@pytest.fixture
def server() -> Iterator[Served]:
    with serve("127.0.0.1") as served:
        yield served


def test_each_run_imports_a_version_and_an_unchanged_file_is_skipped(
    uow: SqlUnitOfWork, server: Served, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, import_allowed_networks="127.0.0.1/32")
    fetcher = make_fetcher(settings)
    storage = LocalObjectStorage(tmp_path / "objects")
    storage.ensure_ready()
    url = server.url("/daily.csv")
    schedule = create_schedule(
        uow,
        ME,
        name="weather",
        cron="0 6 * * *",
        interval_seconds=None,
        timezone="UTC",
        enabled=True,
        action=ScheduleAction(source_url=url, format="csv", steps=[{"processor": "metrics"}]),
        now=T0 - timedelta(minutes=1),
        fetcher=fetcher,
    )
    queue = FakeQueue()
    for day, content in enumerate([DAY_1, DAY_1, DAY_2]):
        server.routes["/daily.csv"] = body(content)
        now = T0 + timedelta(days=day, seconds=1)
        assert run_due_schedules(uow, queue, now, storage=storage) == 1
        status = import_dataset(uow, storage, fetcher, queue.imports[-1], tmp_path, max_bytes=10**6)
        assert status == DatasetStatus.ready
        run_due_schedules(uow, queue, now + timedelta(seconds=1), storage=storage)
    with uow:
        runs = list(reversed(uow.schedules.list_runs(ME, schedule.id)))
        versions = [uow.datasets.get(r.dataset_id, ME) for r in runs if r.dataset_id]
    assert [r.due_at for r in runs] == [T0 + timedelta(days=d) for d in range(3)]
    assert [r.outcome for r in runs] == [
        RunOutcome.submitted,
        RunOutcome.unchanged,
        RunOutcome.submitted,
    ]
    assert [r.version for r in runs] == [1, None, 2]
    assert [v.row_count for v in versions if v] == [2, 2, 3]  # the unchanged run: version 1
    assert all(v and v.source_url == url and v.name == "weather" for v in versions)
    # Each dataset says whose version it is (GET /datasets/{id} shows the same fields).
    assert [(v.schedule_id, v.version) for v in versions if v] == [
        (schedule.id, 1),
        (schedule.id, 1),
        (schedule.id, 2),
    ]
    assert len(queue.jobs) == 2 and len(server.requests) == 3
    # The unchanged download was deleted with its objects.
    with uow:
        assert uow.datasets.get(queue.imports[1], ME) is None
    assert storage.exists(f"datasets/{queue.imports[0]}/original.csv")
    assert not storage.exists(f"datasets/{queue.imports[1]}/original.csv")
