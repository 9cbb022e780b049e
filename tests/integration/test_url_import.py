"""POST /api/v1/datasets/import through the worker task, against HTTP servers on loopback.

The API runs over a real database (SQLite and PostgreSQL), local storage and the fetcher
main.py builds, with ASSAY_IMPORT_ALLOWED_NETWORKS=127.0.0.1/32. What the route publishes is
run in-process by the Celery task itself (eagerly), as a worker would. Servers listen on
127.0.0.1 (allowed), 127.0.0.2 and 127.0.0.3 (loopback, not allowed) and count what reaches
them.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

import workers.tasks  # noqa: F401 - registers the tasks with the app below
from api.app import create_app
from db.engine import make_engine
from main import make_fetcher
from ports.context import Context
from repositories.unit_of_work import SqlUnitOfWork
from schemas.settings import Settings
from services.adapters.storage.local import LocalObjectStorage
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fake_webhooks import FakeWebhookSender
from tests.fakes import FakeQueue
from tests.fixtures.http_servers import Served, body, endless, redirect, serve, stalling
from workers.celery_app import AssayCelery, make_celery
from workers.celery_queue import IMPORT_DATASET_TASK

CSV = b"city,temperature\nOslo,3.5\nLima,19.25\nCairo,22.0\nPerth\n"
LIMIT = 64 * 1024


@dataclass
class ImportStack:
    client: TestClient
    context: Context
    queue: FakeQueue
    storage: LocalObjectStorage
    celery: AssayCelery

    def submit(self, url: str, **fields: str) -> Any:
        return self.client.post("/api/v1/datasets/import", json={"url": url, **fields})

    def run_worker(self) -> None:
        """Run every published import as the worker's task does, in this process."""
        task = self.celery.tasks[IMPORT_DATASET_TASK]
        while self.queue.imports:
            task.apply(args=[str(self.queue.imports.pop(0))], throw=True)

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/datasets/{dataset_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    def objects(self, dataset_id: str) -> list[Path]:
        folder = self.context.settings.objects_dir / "datasets" / "datasets" / dataset_id
        return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def stack(migrated_database_url: str, tmp_path: Path) -> Iterator[ImportStack]:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=migrated_database_url,
        auth_required=False,
        max_upload_bytes=LIMIT,
        import_allowed_networks="127.0.0.1/32",
        import_connect_timeout_s=2.0,
        import_read_timeout_s=1.0,
    )
    engine = make_engine(migrated_database_url)
    storage = LocalObjectStorage(settings.objects_dir / "datasets")
    storage.ensure_ready()
    queue = FakeQueue()
    context = Context(
        settings=settings,
        new_uow=lambda: SqlUnitOfWork(engine),
        datasets_storage=storage,
        results_storage=LocalObjectStorage(settings.objects_dir / "results"),
        queue=queue,
        fetcher=make_fetcher(settings),
        webhook_sender=FakeWebhookSender(),
    )
    celery = make_celery(settings, context_factory=lambda: context)
    try:
        with TestClient(create_app(context, PollingJobWakeups())) as client:
            yield ImportStack(client, context, queue, storage, celery)
    finally:
        celery.close()
        engine.dispose()


@pytest.fixture
def allowed() -> Iterator[Served]:
    with serve("127.0.0.1") as served:
        served.routes["/files/weather.csv"] = body(CSV)
        yield served


def test_an_import_from_an_allowed_server_ends_ready(stack: ImportStack, allowed: Served):
    url = allowed.url("/files/weather.csv")
    response = stack.submit(url)
    assert response.status_code == 202, response.text
    submitted = response.json()
    assert submitted["status"] == "uploaded"
    assert submitted["source_url"] == url
    assert (submitted["name"], submitted["format"], submitted["size_bytes"]) == (
        "weather.csv",
        "csv",
        0,
    )
    assert stack.queue.imports == [UUID(submitted["id"])] and stack.queue.validations == []
    assert allowed.requests == []  # the download is the worker's, not the request's

    stack.run_worker()

    dataset = stack.dataset(submitted["id"])
    assert dataset["status"] == "ready", dataset
    assert (dataset["row_count"], dataset["failed_row_count"]) == (3, 1)
    assert dataset["size_bytes"] == len(CSV)
    assert dataset["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert [c["name"] for c in dataset["columns"]] == ["city", "temperature"]
    assert stack.client.get(f"/api/v1/datasets/{dataset['id']}/content").content == CSV
    assert len(allowed.requests) == 1
    with stack.context.new_uow() as uow:
        stored = uow.datasets.get_for_worker(UUID(dataset["id"]))
    assert stored is not None and stored.source_url == url
    assert not list(stack.context.settings.tmp_dir.glob("validate-*")), "scratch left behind"


def test_a_server_on_a_loopback_address_not_allowed_is_refused_at_submit(stack: ImportStack):
    with serve("127.0.0.2") as internal:
        internal.routes["/weather.csv"] = body(CSV)
        response = stack.submit(internal.url("/weather.csv"))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_params"
        assert error["details"]["field"] == "url"
        assert "127.0.0.2 is a loopback address" in error["message"]
        assert "ASSAY_IMPORT_ALLOWED_NETWORKS" in error["message"]
        assert (internal.connections, internal.requests) == (0, [])
    assert stack.client.get("/api/v1/datasets").json()["items"] == []
    assert stack.queue.imports == []


def test_a_redirect_to_an_address_not_allowed_fails_the_import(stack: ImportStack, allowed: Served):
    with serve("127.0.0.3") as internal:
        internal.routes["/secret.csv"] = body(CSV)
        allowed.routes["/moved"] = redirect(internal.url("/secret.csv"))
        url = allowed.url("/moved")
        submitted = stack.submit(url, format="csv").json()
        stack.run_worker()
        dataset = stack.dataset(submitted["id"])
        assert dataset["status"] == "failed"
        assert dataset["error"] == (
            f"import from {url} failed: redirect 1 to {internal.url('/secret.csv')} refused: "
            "127.0.0.3 is a loopback address; imports reach only public addresses and the "
            "networks listed in ASSAY_IMPORT_ALLOWED_NETWORKS"
        )
        assert (internal.connections, internal.requests) == (0, [])
    assert stack.objects(submitted["id"]) == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/weather.csv",
        "gopher://127.0.0.1/weather.csv",
        "http://user:password@127.0.0.1/weather.csv",
        "weather.csv",
    ],
)
def test_urls_that_are_not_http_are_refused_at_submit(stack: ImportStack, url: str):
    response = stack.submit(url)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == "url"
    assert error["message"].startswith("url refused: ")
    assert stack.queue.imports == []


def test_a_file_over_the_limit_fails_naming_it_and_leaves_nothing(
    stack: ImportStack, allowed: Served
):
    allowed.routes["/endless.csv"] = endless()  # no Content-Length: stopped while reading
    allowed.routes["/declared.csv"] = body(b"x" * (LIMIT + 1))  # refused from its headers
    for path in ("/endless.csv", "/declared.csv"):
        submitted = stack.submit(allowed.url(path)).json()
        stack.run_worker()
        dataset = stack.dataset(submitted["id"])
        assert dataset["status"] == "failed"
        assert (
            f"over the import limit of {LIMIT} bytes (ASSAY_MAX_UPLOAD_BYTES)" in (dataset["error"])
        )
        assert (dataset["size_bytes"], dataset["sha256"]) == (0, "")
        assert stack.objects(submitted["id"]) == [], path
    assert not list(stack.context.settings.tmp_dir.glob("validate-*")), "scratch left behind"


def test_an_error_status_fails_the_import_naming_it(stack: ImportStack, allowed: Served):
    url = allowed.url("/files/missing.csv")
    submitted = stack.submit(url).json()
    stack.run_worker()
    dataset = stack.dataset(submitted["id"])
    assert dataset["status"] == "failed"
    assert dataset["error"] == f"import from {url} failed: the server answered 404 Not Found"
    assert stack.objects(submitted["id"]) == []


def test_a_server_that_goes_silent_fails_the_import_naming_the_timeout(
    stack: ImportStack, allowed: Served
):
    allowed.routes["/slow.csv"] = stalling(b"a,b\n", pause_s=3)
    submitted = stack.submit(allowed.url("/slow.csv")).json()
    stack.run_worker()
    dataset = stack.dataset(submitted["id"])
    assert dataset["status"] == "failed"
    assert (
        f"127.0.0.1:{allowed.port} sent nothing for 1 s (ASSAY_IMPORT_READ_TIMEOUT_S)"
        in (dataset["error"])
    )
    assert stack.objects(submitted["id"]) == []
