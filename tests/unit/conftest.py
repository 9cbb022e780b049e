"""Unit-test fixtures: the API over in-memory fakes."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from schemas.settings import Settings
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext, FakeQueue, FakeStorage, FakeUnitOfWork


@pytest.fixture
def fake_context(tmp_path: Path) -> FakeContext:
    uow = FakeUnitOfWork()
    return FakeContext(
        settings=Settings(data_dir=tmp_path / "data", max_upload_bytes=10 * 1024 * 1024),
        new_uow=lambda: uow,
        datasets_storage=FakeStorage(),
        results_storage=FakeStorage(),
        queue=FakeQueue(),
    )


@pytest.fixture
def client(fake_context: FakeContext) -> Iterator[TestClient]:
    with TestClient(
        create_app(fake_context, PollingJobWakeups()), raise_server_exceptions=False
    ) as test_client:
        yield test_client
