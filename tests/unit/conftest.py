"""Unit-test fixtures: the API over in-memory fakes, called with a real API key."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from schemas.domain.records import DEFAULT_OWNER, KeyScope
from schemas.settings import Settings
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext, FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.keys import create_key


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
def api_key(fake_context: FakeContext) -> str:
    """The secret of an admin key of the default owner, stored in the fake unit of work."""
    _, secret = create_key(fake_context.new_uow(), owner_id=DEFAULT_OWNER, scope=KeyScope.admin)
    return secret


@pytest.fixture
def client(fake_context: FakeContext, api_key: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(fake_context, PollingJobWakeups()), raise_server_exceptions=False
    ) as test_client:
        test_client.headers["Authorization"] = f"Bearer {api_key}"
        yield test_client
