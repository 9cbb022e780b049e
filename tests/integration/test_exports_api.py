"""The exports API over a SQL database and a real destination: 202, reads, owners, 4xx, and
the destination's password never in a response or a log line."""

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from db.engine import make_engine
from ports.context import Context
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import KeyScope
from schemas.settings import Settings
from services.adapters.wakeups.polling import PollingJobWakeups
from services.exports.postgres import PostgresTableLoader
from tests.fakes import FakeFetcher, FakeQueue, FakeStorage, FakeWebhookSender
from tests.integration.exports_support import add_dataset, destination_database, query, run
from use_cases.keys import create_key

pytestmark = pytest.mark.postgres
PASSWORD = "S3cretPassw0rd"


class Api:
    def __init__(self, context: Context, target: str, tmp: Path) -> None:
        self.context, self.target, self.tmp = context, target, tmp
        self.app = create_app(context, PollingJobWakeups())
        self.keys = {
            owner: create_key(context.new_uow(), owner_id=owner, scope=KeyScope.write)[1]
            for owner in ("alice", "bob")
        }

    def client(self, owner: str) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {self.keys[owner]}"
        return client


@pytest.fixture
def api(tmp_path: Path, sqlite_migrated_template: Path) -> Iterator[Api]:
    path = tmp_path / "assay.db"
    shutil.copyfile(sqlite_migrated_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with destination_database() as target:
        assert PASSWORD in target
        settings = Settings(
            data_dir=tmp_path / "data",
            destinations={"warehouse": target, "down": f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"},
        )
        context = Context(
            settings=settings,
            new_uow=lambda: SqlUnitOfWork(engine),
            datasets_storage=FakeStorage(),
            results_storage=FakeStorage(),
            queue=FakeQueue(),
            fetcher=FakeFetcher(),
            webhook_sender=FakeWebhookSender(),
        )
        yield Api(context, target, tmp_path)
    engine.dispose()


def body(dataset_id: Any, **changes: Any) -> dict[str, Any]:
    return {
        "source": {"dataset_id": str(dataset_id)},
        "destination": "warehouse",
        "table": "people",
        "mode": "create",
    } | changes


def dataset(api: Api, owner: str = "alice") -> Any:
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    storage = api.context.datasets_storage
    assert isinstance(storage, FakeStorage)
    return add_dataset(api.context.new_uow(), storage, table, api.tmp, owner=owner)


def work(api: Api, export_id: str, **overrides: Any) -> str:
    urls = {k: v.get_secret_value() for k, v in api.context.settings.destinations.items()}
    storage = api.context.datasets_storage
    assert isinstance(storage, FakeStorage)
    from uuid import UUID

    return run(
        api.context.new_uow,
        storage,
        PostgresTableLoader(urls),
        UUID(export_id),
        api.tmp,
        **overrides,
    )


def test_submit_run_and_read_an_export(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice = api.client("alice")
    created = alice.post("/api/v1/exports", json=body(dataset(api)))
    assert created.status_code == 202, created.text
    export = created.json()
    assert export["status"] == "queued" and export["destination"] == "warehouse"
    assert created.headers["Location"] == f"/api/v1/exports/{export['id']}"
    queue = api.context.queue
    assert isinstance(queue, FakeQueue) and queue.exports == [__import__("uuid").UUID(export["id"])]

    assert work(api, export["id"]) == "completed"
    detail = alice.get(export["links"]["self"])
    assert detail.status_code == 200
    assert detail.json()["status"] == "completed"
    assert detail.json()["result"]["rows_loaded"] == 3
    assert query(api.target, "SELECT count(*) FROM people") == [(3,)]
    events = alice.get(export["links"]["events"]).json()
    assert [e["type"] for e in events["items"]][:3] == ["created", "enqueued", "started"]
    assert events["items"][-1]["type"] == "completed"
    assert alice.get(export["links"]["failed_rows"]).json()["items"] == []
    listed = alice.get("/api/v1/exports", params={"limit": 1}).json()
    assert [e["id"] for e in listed["items"]] == [export["id"]]

    # An unreachable destination fails (after its attempts) without showing its password.
    down = alice.post("/api/v1/exports", json=body(dataset(api), destination="down")).json()
    assert work(api, down["id"], max_attempts=1) == "failed"
    failed = alice.get(down["links"]["self"]).json()
    assert failed["status"] == "failed" and "unreachable" in failed["error"]["message"]

    everything = "".join(
        alice.get(path).text
        for path in ("/api/v1/exports", down["links"]["self"], down["links"]["events"])
    )
    assert PASSWORD not in everything
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(api.context.settings)


def test_failed_rows_are_paginated(api: Api) -> None:
    query(api.target, "CREATE TABLE people (id bigint CHECK (id > 1), name text)")
    alice = api.client("alice")
    export = alice.post("/api/v1/exports", json=body(dataset(api), mode="append")).json()
    assert work(api, export["id"]) == "completed"
    page = alice.get(export["links"]["failed_rows"], params={"limit": 1}).json()
    assert page["items"] == [
        {
            "row_number": 1,
            "values": {"id": 1, "name": "a"},
            "reason": page["items"][0]["reason"],
        }
    ]
    assert "check constraint" in page["items"][0]["reason"]
    assert page["next_cursor"] is None
    assert query(api.target, "SELECT id FROM people ORDER BY id") == [(2,), (3,)]


def test_another_owner_sees_nothing(api: Api) -> None:
    export = api.client("alice").post("/api/v1/exports", json=body(dataset(api))).json()
    bob = api.client("bob")
    base = f"/api/v1/exports/{export['id']}"
    for path in (base, f"{base}/events", f"{base}/failed-rows"):
        response = bob.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert bob.post(f"{base}/cancel").status_code == 404
    assert bob.get("/api/v1/exports").json()["items"] == []
    # Nor can bob export alice's dataset.
    assert bob.post("/api/v1/exports", json=body(export["dataset_id"])).status_code == 404
    # Alice cancels her queued export; a second cancel is a conflict.
    alice = api.client("alice")
    assert alice.post(f"{base}/cancel").json()["status"] == "cancelled"
    assert alice.post(f"{base}/cancel").status_code == 409


@pytest.mark.parametrize(
    ("changes", "status", "where"),
    [
        ({"destination": "nowhere"}, 400, "nowhere"),
        ({"table": "drop table; --"}, 400, "table"),
        ({"table": "a.b.c"}, 400, "table"),
        ({"table": "1abc"}, 400, "table"),
        ({"mode": "merge"}, 422, "mode"),
        ({"source": {}}, 422, "source"),
        ({"source": {"job_id": "0190d6a4-0000-7000-8000-000000000000"}}, 422, "source"),
    ],
)
def test_bad_input_is_a_4xx_naming_it(api: Api, changes: dict[str, Any], status: int, where: str):
    response = api.client("alice").post("/api/v1/exports", json=body(dataset(api), **changes))
    assert response.status_code == status, response.text
    assert where in response.text


def test_a_dataset_a_pending_export_reads_cannot_be_deleted(api: Api) -> None:
    alice = api.client("alice")
    dataset_id = dataset(api)
    export = alice.post("/api/v1/exports", json=body(dataset_id)).json()

    refused = alice.delete(f"/api/v1/datasets/{dataset_id}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"]["active_exports"] == 1
    assert alice.get(f"/api/v1/datasets/{dataset_id}").status_code == 200

    assert work(api, export["id"]) == "completed"
    assert alice.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    # The finished export outlives its source.
    assert alice.get(export["links"]["self"]).json()["status"] == "completed"
