"""Owners over fakes: another owner's resources are 404 like missing ones; read keys never write."""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from schemas.domain.ids import new_id
from schemas.domain.records import (
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
)
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext
from use_cases.datasets import preview_key
from use_cases.keys import create_key

ALICE, BOB = "alice", "bob"
METRICS = [{"processor": "metrics"}]


@dataclass(frozen=True)
class Owned:
    """Alice's ready dataset (with failed rows) and completed job (with events, an artifact)."""

    dataset_id: UUID
    job_id: UUID
    running_job_id: UUID


def seed(context: FakeContext) -> Owned:
    uow = context.new_uow()
    now = datetime.now(UTC)
    dataset = Dataset(
        id=new_id(),
        owner_id=ALICE,
        name="people.csv",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=4,
        sha256="0" * 64,
        storage_key="datasets/people.csv",
        parquet_key="datasets/people.parquet",
        row_count=1,
        columns=[ColumnInfo(name="a", type="int64", null_count=0)],
        failed_row_count=1,
        created_at=now,
        updated_at=now,
    )
    uow.datasets.add(dataset)
    context.datasets_storage.objects[dataset.storage_key] = b"a\n1\n"
    context.datasets_storage.objects[preview_key(dataset.id)] = json.dumps([{"a": 1}]).encode()
    uow.failed_rows.add_many(
        [FailedRow(dataset_id=dataset.id, line_number=3, raw_text="x", reason="bad")]
    )

    def job(status: JobStatus) -> Job:
        return Job(
            id=new_id(),
            owner_id=ALICE,
            dataset_id=dataset.id,
            status=status,
            steps=[JobStep(processor="metrics")],
            result={"steps": []} if status == JobStatus.completed else None,
            created_at=now,
            updated_at=now,
        )

    completed, running = job(JobStatus.completed), job(JobStatus.running)
    uow.jobs.add(completed)
    uow.jobs.add(running)
    for kind in ("created", "started", "completed"):
        uow.job_events.add(JobEvent(job_id=completed.id, type=kind, created_at=now))
    key = f"jobs/{completed.id}/attempt-1/summary.json"
    context.results_storage.objects[key] = b"{}"
    uow.artifacts.add(
        Artifact(
            job_id=completed.id,
            name="summary.json",
            content_type="application/json",
            size_bytes=2,
            sha256="1" * 64,
            storage_key=key,
            created_at=now,
        )
    )
    return Owned(dataset.id, completed.id, running.id)


@pytest.fixture
def owned(fake_context: FakeContext) -> Owned:
    return seed(fake_context)


@pytest.fixture
def as_owner(fake_context: FakeContext) -> Iterator[Callable[[str, KeyScope], TestClient]]:
    """A function (owner, scope) -> a TestClient calling with a new key of that owner."""
    app = create_app(fake_context, PollingJobWakeups())
    with TestClient(app, raise_server_exceptions=False) as base:

        def client(owner: str, scope: KeyScope) -> TestClient:
            _, secret = create_key(fake_context.new_uow(), owner_id=owner, scope=scope)
            base.headers["Authorization"] = f"Bearer {secret}"
            return base

        yield client


def reads(owned: Owned) -> list[str]:
    dataset, job = f"/api/v1/datasets/{owned.dataset_id}", f"/api/v1/jobs/{owned.job_id}"
    return [
        dataset,
        f"{dataset}/content",
        f"{dataset}/preview",
        f"{dataset}/failed-rows",
        job,
        f"{job}/events",
        f"{job}/stream",
        f"{job}/result",
        f"{job}/artifacts/summary.json",
    ]


def writes(owned: Owned) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", f"/api/v1/jobs/{owned.running_job_id}/cancel", None),
        ("DELETE", f"/api/v1/jobs/{owned.job_id}", None),
        ("DELETE", f"/api/v1/datasets/{owned.dataset_id}", None),
        ("POST", "/api/v1/jobs", {"dataset_id": str(owned.dataset_id), "steps": METRICS}),
    ]


def without(body: dict, *ids: UUID) -> str:
    """The error body with the resource ids blanked, to compare two 404s."""
    text = json.dumps(body, sort_keys=True)
    for value in ids:
        text = text.replace(str(value), "<id>")
    return text


def test_the_owner_reads_everything(as_owner, owned: Owned) -> None:
    client = as_owner(ALICE, KeyScope.read)
    for url in reads(owned):
        assert client.get(url).status_code == 200, url
    assert [d["id"] for d in client.get("/api/v1/datasets").json()["items"]] == [
        str(owned.dataset_id)
    ]
    assert len(client.get("/api/v1/jobs").json()["items"]) == 2


def test_another_owner_gets_404_exactly_like_a_missing_resource(as_owner, owned: Owned) -> None:
    client = as_owner(BOB, KeyScope.admin)  # an admin key too is one owner's
    missing = Owned(new_id(), new_id(), new_id())
    for theirs, nothing in zip(reads(owned), reads(missing), strict=True):
        response, absent = client.get(theirs), client.get(nothing)
        assert (response.status_code, absent.status_code) == (404, 404), theirs
        assert without(response.json(), *vars(owned).values()) == without(
            absent.json(), *vars(missing).values()
        )
    for (method, theirs, body), (_, nothing, missing_body) in zip(
        writes(owned), writes(missing), strict=True
    ):
        response = client.request(method, theirs, json=body)
        absent = client.request(method, nothing, json=missing_body)
        assert (response.status_code, absent.status_code) == (404, 404), theirs
        assert without(response.json(), *vars(owned).values()) == without(
            absent.json(), *vars(missing).values()
        )
    assert client.get("/api/v1/datasets").json()["items"] == []
    assert client.get("/api/v1/jobs").json()["items"] == []
    assert client.get("/api/v1/jobs", params={"dataset_id": str(owned.dataset_id)}).json() == {
        "items": [],
        "next_cursor": None,
    }


def test_nothing_of_alice_changed_after_bob_tried(
    as_owner, owned: Owned, fake_context: FakeContext
) -> None:
    bob = as_owner(BOB, KeyScope.write)
    for method, url, body in writes(owned):
        assert bob.request(method, url, json=body).status_code == 404
    uow = fake_context.new_uow()
    assert uow.datasets.get_for_worker(owned.dataset_id) is not None
    assert uow.jobs.get_for_worker(owned.job_id) is not None
    running = uow.jobs.get_for_worker(owned.running_job_id)
    assert running is not None and not running.cancel_requested
    assert fake_context.queue.jobs == [] and fake_context.queue.revoked == []
    assert len(fake_context.results_storage.objects) == 1
    assert len(fake_context.datasets_storage.objects) == 2


def test_a_read_key_gets_403_on_every_write_route(
    as_owner, owned: Owned, fake_context: FakeContext
) -> None:
    client = as_owner(ALICE, KeyScope.read)
    upload = client.post("/api/v1/datasets", files={"file": ("d.csv", b"a\n1\n")})
    assert upload.status_code == 403 and upload.json()["error"]["code"] == "forbidden"
    for method, url, body in writes(owned):
        response = client.request(method, url, json=body)
        assert response.status_code == 403, url
        assert response.json()["error"]["code"] == "forbidden"
    assert fake_context.queue.validations == [] and fake_context.queue.jobs == []
    assert fake_context.new_uow().jobs.get_for_worker(owned.job_id) is not None


def test_a_write_key_changes_its_owners_resources(as_owner, owned: Owned) -> None:
    client = as_owner(ALICE, KeyScope.write)
    assert client.post(f"/api/v1/jobs/{owned.running_job_id}/cancel").status_code == 202
    assert client.delete(f"/api/v1/jobs/{owned.job_id}").status_code == 204
    assert client.get(f"/api/v1/jobs/{owned.job_id}").status_code == 404
