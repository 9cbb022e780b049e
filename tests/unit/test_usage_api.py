"""GET /api/v1/usage and the admin routes over fakes: an owner sees only its own figures."""

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from schemas.domain.ids import new_id
from schemas.domain.records import (
    Artifact,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    Job,
    JobStatus,
    JobStep,
    KeyScope,
)
from schemas.settings import OwnerRetention
from tests.fakes import FakeContext
from use_cases.keys import create_key

ALICE, BOB = "alice", "bob"


def seed(context: FakeContext, owner: str, size: int, age_days: float = 0) -> Dataset:
    uow = context.new_uow()
    when = datetime.now(UTC) - timedelta(days=age_days)
    dataset = Dataset(
        id=new_id(),
        owner_id=owner,
        name=f"{owner}.csv",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=size,
        sha256="0" * 64,
        storage_key=f"datasets/{owner}/original.csv",
        created_at=when,
        updated_at=when,
    )
    uow.datasets.rows[dataset.id] = dataset
    job = Job(
        id=new_id(),
        owner_id=owner,
        dataset_id=dataset.id,
        status=JobStatus.completed,
        steps=[JobStep(processor="metrics")],
        created_at=when,
        updated_at=when,
        finished_at=when,
    )
    uow.jobs.add(job)
    uow.artifacts.add(
        Artifact(
            job_id=job.id,
            name="profile.json",
            content_type="application/json",
            size_bytes=size // 10,
            sha256="0" * 64,
            storage_key=f"jobs/{job.id}/attempt-1/profile.json",
            created_at=when,
        )
    )
    return dataset


def key(context: FakeContext, owner: str, scope: KeyScope = KeyScope.write) -> dict[str, str]:
    _, secret = create_key(context.new_uow(), owner_id=owner, scope=scope)
    return {"Authorization": f"Bearer {secret}"}


def test_an_owner_sees_its_own_usage_only(client: TestClient, fake_context: FakeContext) -> None:
    seed(fake_context, ALICE, 1000)
    seed(fake_context, BOB, 50)
    alice = key(fake_context, ALICE, KeyScope.read)

    response = client.get("/api/v1/usage", headers=alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["owner_id"] == ALICE
    assert body["datasets"] == {"ready": 1} and body["jobs"] == {"completed": 1}
    assert (body["dataset_bytes"], body["artifact_bytes"], body["total_bytes"]) == (1000, 100, 1100)

    refused = client.get("/api/v1/usage", params={"owner": BOB}, headers=alice)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"]["field"] == "owner"
    assert BOB not in refused.text and "50" not in refused.text
    assert client.get("/api/v1/admin/usage", headers=alice).status_code == 403
    assert client.get("/api/v1/admin/retention", headers=alice).status_code == 403
    assert client.get("/api/v1/usage", params={"owner": ALICE}, headers=alice).status_code == 200


def test_an_admin_reads_any_owner_and_all_owners(
    client: TestClient, fake_context: FakeContext
) -> None:
    seed(fake_context, ALICE, 1000)
    seed(fake_context, BOB, 50)
    bob = client.get("/api/v1/usage", params={"owner": BOB})  # the client's key is an admin's
    assert bob.status_code == 200 and bob.json()["total_bytes"] == 55
    nobody = client.get("/api/v1/usage", params={"owner": "carol"}).json()
    assert nobody["total_bytes"] == 0 and nobody["datasets"] == {}
    everyone = client.get("/api/v1/admin/usage").json()
    assert [(u["owner_id"], u["total_bytes"]) for u in everyone] == [(ALICE, 1100), (BOB, 55)]
    assert client.get("/api/v1/usage", params={"owner": ""}).status_code == 422


def test_the_dry_run_lists_expired_records_without_deleting(
    client: TestClient, fake_context: FakeContext
) -> None:
    old = seed(fake_context, ALICE, 1000, age_days=40)
    seed(fake_context, BOB, 50, age_days=40)
    seed(fake_context, ALICE, 10, age_days=1)
    settings = fake_context.settings
    settings.retention_job_days = 30
    settings.retention_dataset_unused_days = 30
    settings.retention_owners = {BOB: OwnerRetention(job_days=None, dataset_unused_days=None)}

    response = client.get("/api/v1/admin/retention")
    assert response.status_code == 200, response.text
    items = response.json()
    assert [(i["kind"], i["owner_id"]) for i in items] == [("job", ALICE), ("dataset", ALICE)]
    assert items[1]["id"] == str(old.id) and items[1]["bytes"] == 1000
    assert items[1]["reason"] == "not used for more than 30 day(s)"
    assert len(client.get("/api/v1/admin/retention", params={"limit": 1}).json()) == 1
    assert client.get("/api/v1/admin/retention", params={"limit": 0}).status_code == 422
    uow = fake_context.new_uow()
    assert len(uow.datasets.rows) == 3 and len(uow.jobs.rows) == 3  # nothing deleted
