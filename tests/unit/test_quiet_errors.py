"""A 503 names the dependency that is down, never where it runs; a missing bucket comes back.

The database and the broker are pointed at a closed port of this machine: connecting is
refused at once, and the port number must not reach the client (only the log).
"""

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from db.engine import make_engine
from ports.context import Context
from ports.queue import QueueUnavailable
from ports.repositories import DatabaseUnavailable
from ports.storage import ObjectNotFound, StorageUnavailable
from repositories.unit_of_work import SqlUnitOfWork
from schemas.settings import Settings
from services.adapters.storage.s3 import S3ObjectStorage
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext
from tests.fixtures.storage import make_s3_storage
from workers.celery_app import make_celery
from workers.celery_queue import CeleryTaskQueue

LOCAL = ("127.0.0.1", 40000)  # /ready answers loopback callers without a key


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_ports(context: Context, **changes: Any) -> Context:
    """The context with some of its ports replaced by real adapters."""
    return Context(**{**vars(context), **changes})


def client_for(context: Context, extra_routes: dict[str, Exception] | None = None) -> TestClient:
    app = create_app(context, PollingJobWakeups())
    for path, error in (extra_routes or {}).items():
        _raising_route(app, path, error)
    return TestClient(app, client=LOCAL, raise_server_exceptions=False)


def _raising_route(app: FastAPI, path: str, error: Exception) -> None:
    async def fail() -> None:
        raise error

    app.add_api_route(path, fail)


def assert_quiet(body: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in body, (secret, body)


def test_ready_names_a_database_that_is_down_but_not_where_it_runs(
    fake_context: FakeContext, api_key: str, closed_port: int, caplog: pytest.LogCaptureFixture
):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/assay"
    engine = make_engine(url)
    context = with_ports(fake_context, new_uow=lambda: SqlUnitOfWork(engine))
    with caplog.at_level(logging.WARNING), client_for(context) as client:
        response = client.get("/ready")
        # A route that needs the database (its key is looked up there) says the same.
        route = client.get("/api/v1/datasets", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "unavailable"
    assert body["checks"]["broker"] == "ok"
    assert_quiet(response.text, str(closed_port), "127.0.0.1", "postgres")
    assert route.status_code == 503
    assert route.json()["error"]["details"]["dependency"] == "database"
    assert "database" in route.json()["error"]["message"]
    assert_quiet(route.text, str(closed_port), "127.0.0.1", "psycopg")
    assert route.headers["Retry-After"]
    # The operator still learns where and why.
    assert str(closed_port) in caplog.text


def test_ready_names_a_broker_that_is_down_but_not_where_it_runs(
    fake_context: FakeContext, closed_port: int, caplog: pytest.LogCaptureFixture
):
    settings = Settings(broker_url=f"redis://127.0.0.1:{closed_port}/0")
    queue = CeleryTaskQueue(make_celery(settings, context_factory=lambda: fake_context))
    context = with_ports(fake_context, queue=queue)
    with caplog.at_level(logging.WARNING), client_for(context) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "unavailable"
    assert response.json()["checks"]["database"] == "ok"
    assert_quiet(response.text, str(closed_port), "127.0.0.1", "redis")
    assert str(closed_port) in caplog.text


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (DatabaseUnavailable('connection to server at "10.1.2.3", port 5432 failed'), "database"),
        (QueueUnavailable("broker unreachable: redis://10.1.2.3:6379/0: refused"), "broker"),
        (
            StorageUnavailable("S3 bucket 'datasets' at http://10.1.2.3:9000 is unreachable"),
            "storage",
        ),
        (StorageUnavailable("cannot write /var/lib/assay/objects/datasets/x"), "storage"),
    ],
)
def test_a_route_503_names_the_dependency_only(
    fake_context: FakeContext,
    error: Exception,
    dependency: str,
    caplog: pytest.LogCaptureFixture,
):
    with caplog.at_level(logging.WARNING), client_for(fake_context, {"/boom": error}) as client:
        response = client.get("/boom")
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": "service_unavailable",
        "message": f"the {dependency} is unavailable; try again shortly",
        "details": {"dependency": dependency, "retry": True},
    }
    assert_quiet(response.text, "10.1.2.3", "/var/lib", "9000", "6379", "5432")
    assert str(error) in caplog.text


# --- a bucket deleted while the service runs ----------------------------------------------------


@pytest.fixture
def s3_context(fake_context: FakeContext, moto_s3_endpoint: str) -> Iterator[Context]:
    """The fake context with its datasets and results on S3 (moto), buckets made at start."""
    storages = {
        name: make_s3_storage(moto_s3_endpoint, f"{name}-{uuid4().hex[:8]}")
        for name in ("datasets", "results")
    }
    for storage in storages.values():
        storage.ensure_ready()
    yield with_ports(
        fake_context, datasets_storage=storages["datasets"], results_storage=storages["results"]
    )
    for storage in storages.values():
        if bucket_exists(storage):  # moto keeps buckets for the whole session
            drop_bucket(storage)


def drop_bucket(storage: S3ObjectStorage) -> None:
    """What an operator's mistake or a lifecycle rule does: the bucket and all in it go."""
    storage.delete_prefix("")
    storage.client.delete_bucket(Bucket=storage.bucket)


def bucket_exists(storage: S3ObjectStorage) -> bool:
    names = [b["Name"] for b in storage.client.list_buckets().get("Buckets", [])]
    return storage.bucket in names


def test_an_upload_after_the_bucket_was_deleted_recreates_it(
    s3_context: Context, api_key: str, tmp_path: Path
):
    storage = s3_context.datasets_storage
    assert isinstance(storage, S3ObjectStorage)
    with client_for(s3_context) as client:
        client.headers["Authorization"] = f"Bearer {api_key}"
        assert client.get("/ready").status_code == 200
        drop_bucket(storage)
        assert not bucket_exists(storage)

        created = client.post("/api/v1/datasets", files={"file": ("a.csv", b"x,y\n1,2\n")})
        assert created.status_code == 201, created.text
        assert bucket_exists(storage)
        listed = storage.client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        assert [storage.size(item["Key"]) for item in listed] == [len(b"x,y\n1,2\n")]


def test_ready_reports_a_deleted_bucket_once_and_recreates_it(
    s3_context: Context, moto_s3_endpoint: str, caplog: pytest.LogCaptureFixture
):
    storage = s3_context.results_storage
    assert isinstance(storage, S3ObjectStorage)
    drop_bucket(storage)
    with caplog.at_level(logging.WARNING), client_for(s3_context) as client:
        first = client.get("/ready")
        second = client.get("/ready")
    assert first.status_code == 503
    assert first.json()["checks"]["results_storage"] == "unavailable"
    assert_quiet(first.text, moto_s3_endpoint.split("//")[1])
    assert f"{storage.bucket!r}" in caplog.text  # the log names the bucket, and where
    assert second.status_code == 200, second.text
    assert bucket_exists(storage)


def test_a_download_from_a_deleted_bucket_is_missing_not_unavailable(s3_context: Context):
    storage = s3_context.datasets_storage
    assert isinstance(storage, S3ObjectStorage)
    source = Path(__file__)
    storage.put_file("kept", source)
    drop_bucket(storage)
    with pytest.raises(ObjectNotFound):
        storage.iter_chunks("kept")
    assert bucket_exists(storage)
    storage.delete("kept")  # nothing there, and no error
    drop_bucket(storage)
    storage.delete("kept")  # no bucket either: still no error
