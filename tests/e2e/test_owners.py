"""Owners on the production stack (PostgreSQL, Redis, S3), keys on: the security boundary.

The route walk reads the routes from the OpenAPI document, so a route added tomorrow is tried
with owner B's key on owner A's resources the day it is added; a new path parameter or a new
request body fails the walk until it is taught here.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.e2e.conftest import Stack, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CSV = b"city,temperature\nOslo,3.5\nLima,19.25\nPune,28.5\nbad-row\n"
IDEMPOTENCY_KEY = "owner-a-once"
# Loopback is allowed for webhooks in the test stacks; nothing listens on port 9.
WEBHOOK = {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}


@dataclass
class OwnerA:
    dataset_id: str
    job_id: str
    artifact: str
    key_id: str
    key: str
    webhook_id: str = ""
    export_id: str = ""
    schedule_id: str = ""


def wait_for(client: httpx.Client, url: str, done: Callable[[dict[str, Any]], bool]) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(url).json()
        if done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} did not get there: {body}")


@pytest.fixture(scope="module")
def owner_a(production_stack: Stack) -> OwnerA:
    key = production_stack.create_key("owner-a")
    with production_stack.client(key) as client:
        created = client.post("/api/v1/datasets", files={"file": ("a.csv", CSV)})
        assert created.status_code == 201, created.text
        dataset_id = created.json()["id"]
        wait_for(client, f"/api/v1/datasets/{dataset_id}", lambda d: d["status"] == "ready")
        job = client.post(
            "/api/v1/jobs",
            json={
                "dataset_id": dataset_id,
                "steps": [{"processor": "metrics"}, {"processor": "normalize"}],
            },
            headers={"Idempotency-Key": IDEMPOTENCY_KEY},
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        wait_for(client, f"/api/v1/jobs/{job_id}", lambda j: j["status"] == "completed")
        artifact = client.get(f"/api/v1/jobs/{job_id}/result").json()["artifacts"][0]["name"]
        hook = client.post("/api/v1/webhooks", json=WEBHOOK)
        assert hook.status_code == 201, hook.text
        export = client.post("/api/v1/exports", json=export_body(dataset_id))
        assert export.status_code == 202, export.text
        schedule = client.post("/api/v1/schedules", json=schedule_body(dataset_id))
        assert schedule.status_code == 201, schedule.text
    with production_stack.client(production_stack.create_key("ops", "admin")) as admin:
        (listed,) = admin.get("/api/v1/keys", params={"owner": "owner-a"}).json()
    ids = (hook.json()["id"], export.json()["id"], schedule.json()["id"])
    return OwnerA(dataset_id, job_id, artifact, listed["id"], key, *ids)


def export_body(dataset_id: str) -> dict[str, Any]:
    return {
        "source": {"dataset_id": dataset_id},
        "destination": "warehouse",
        "table": f"owner_a_{uuid4().hex[:8]}",
        "mode": "create",
    }


def schedule_body(dataset_id: str) -> dict[str, Any]:
    """A paused daily schedule (it never runs during the test)."""
    return {
        "name": "daily",
        "interval_seconds": 86400,
        "enabled": False,
        "action": {"dataset_id": dataset_id, "steps": [{"processor": "metrics"}]},
    }


def routes(stack: Stack) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) of every /api/v1 route in the OpenAPI document."""
    document = httpx.get(f"{stack.base_url}/openapi.json").json()
    for path, operations in document["paths"].items():
        if path.startswith("/api/v1/"):
            for method, operation in operations.items():
                yield method.upper(), path, operation


def request_for(method: str, path: str, a: OwnerA) -> dict[str, Any]:
    """What a client would send to this route, aimed at owner A's resources."""
    values = {
        "dataset_id": a.dataset_id,
        "job_id": a.job_id,
        "name": a.artifact,
        "key_id": a.key_id,
        "webhook_id": a.webhook_id,
        "export_id": a.export_id,
        "schedule_id": a.schedule_id,
    }
    url = path
    for name, value in values.items():
        url = url.replace("{" + name + "}", value)
    assert "{" not in url, f"the walk does not know the path parameter in {path}: add it"
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/api/v1/datasets"): {"files": {"file": ("b.csv", b"x\n1\n")}},
        ("POST", "/api/v1/jobs"): {
            "json": {"dataset_id": a.dataset_id, "steps": [{"processor": "metrics"}]},
            "headers": {"Idempotency-Key": IDEMPOTENCY_KEY},
        },
        ("POST", "/api/v1/keys"): {"json": {"owner": "owner-b", "scope": "admin"}},
        ("POST", "/api/v1/webhooks"): {"json": WEBHOOK},
        ("POST", "/api/v1/exports"): {"json": export_body(a.dataset_id)},
        ("POST", "/api/v1/schedules"): {"json": schedule_body(a.dataset_id)},
        ("PATCH", "/api/v1/schedules/{schedule_id}"): {"json": {"enabled": False}},
        # Loopback 127.0.0.1 is allowed in the test stacks; nothing listens on the port, so the
        # worker's download fails, in the importing owner's space.
        ("POST", "/api/v1/datasets/import"): {
            "json": {"url": f"http://127.0.0.1:{free_port()}/b.csv"}
        },
    }
    return {"method": method, "url": url, **bodies.get((method, path), {})}


def a_resources_text(a: OwnerA) -> tuple[str, ...]:
    return (a.dataset_id, a.job_id, a.key_id, a.webhook_id, a.export_id, a.schedule_id)


def test_without_a_key_every_route_is_401_with_a_challenge(production_stack: Stack) -> None:
    with production_stack.client() as client:
        client.headers.pop("Authorization")
        for method, path, _ in routes(production_stack):
            response = client.request(**request_for(method, path, _dummy()))
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json()["error"]["code"] == "unauthenticated"


def test_an_unknown_or_revoked_key_is_401(production_stack: Stack) -> None:
    key = production_stack.create_key("short-lived")
    with production_stack.client(key) as client:
        assert client.get("/api/v1/datasets").status_code == 200
    with production_stack.client(production_stack.create_key("ops2", "admin")) as admin:
        (listed,) = admin.get("/api/v1/keys", params={"owner": "short-lived"}).json()
        assert admin.post(f"/api/v1/keys/{listed['id']}/revoke").status_code == 200
    for secret in (key, "assay_not-a-key", "not even the prefix"):
        with production_stack.client(secret) as client:
            response = client.get("/api/v1/datasets")
            assert response.status_code == 401, response.text


def test_a_read_key_reads_but_every_write_route_is_403(
    production_stack: Stack, owner_a: OwnerA
) -> None:
    reader = production_stack.create_key("owner-a", "read")
    with production_stack.client(reader) as client:
        assert client.get(f"/api/v1/datasets/{owner_a.dataset_id}").status_code == 200
        for method, path, _ in routes(production_stack):
            if method != "GET":
                response = client.request(**request_for(method, path, owner_a))
                assert response.status_code == 403, (method, path, response.text)


def test_owner_b_can_neither_see_nor_touch_owner_a(production_stack: Stack, owner_a: OwnerA):
    b_key = production_stack.create_key("owner-b")
    before = snapshot(production_stack, owner_a)
    with production_stack.client(b_key) as client:
        for method, path, _ in routes(production_stack):
            response = client.request(**request_for(method, path, owner_a))
            where = (method, path, response.status_code, response.text[:300])
            if path.startswith(("/api/v1/keys", "/api/v1/admin")):
                assert response.status_code == 403, where  # the operator's
            elif "{" in path:
                assert response.status_code == 404, where  # exactly like a missing id
                assert response.json()["error"]["code"] == "not_found", where
            elif method == "GET":
                assert response.status_code == 200, where
                assert not any(text in response.text for text in a_resources_text(owner_a)), where
            else:  # B creates in B's space, or names A's dataset: never A's job by A's key
                assert response.status_code in (201, 202, 404), where
                assert owner_a.job_id not in response.text, where
    assert snapshot(production_stack, owner_a) == before


def snapshot(stack: Stack, a: OwnerA) -> dict[str, Any]:
    """What owner A sees of their resources (a change by B would show here)."""
    with stack.client(a.key) as client:
        dataset = client.get(f"/api/v1/datasets/{a.dataset_id}").json()
        job = client.get(f"/api/v1/jobs/{a.job_id}").json()
        events = client.get(f"/api/v1/jobs/{a.job_id}/events").json()["items"]
        download = client.get(f"/api/v1/jobs/{a.job_id}/artifacts/{a.artifact}")
        failed = client.get(f"/api/v1/datasets/{a.dataset_id}/failed-rows").json()
        return {
            "dataset": {k: dataset[k] for k in ("status", "row_count", "failed_row_count")},
            "job": {k: job[k] for k in ("status", "attempts", "cancel_requested", "updated_at")},
            "events": len(events),
            "artifact": download.status_code in (200, 307),
            "failed_rows": len(failed["items"]),
        }


def _dummy() -> OwnerA:
    """Ids that exist nowhere: without a key the answer is 401 before any lookup."""
    zero = "00000000-0000-7000-8000-000000000000"
    return OwnerA(zero, zero, "x.csv", zero, "", zero, zero, zero)
