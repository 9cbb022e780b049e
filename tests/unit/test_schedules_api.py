"""The schedule routes over fakes: create, list, detail, change, run now, runs, delete."""

from datetime import UTC, datetime
from uuid import UUID
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from pydantic import SecretStr

from schemas.domain.ids import new_id
from schemas.domain.records import ColumnInfo, Dataset, DatasetFormat, DatasetStatus, KeyScope
from tests.fakes import FakeContext
from use_cases.keys import create_key

METRICS = [{"processor": "metrics"}]


def add_dataset(context: FakeContext, owner: str = "default") -> Dataset:
    now = datetime.now(UTC)
    dataset = Dataset(
        id=new_id(),
        owner_id=owner,
        name="d",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=1,
        sha256="a" * 64,
        storage_key="k",
        columns=[ColumnInfo(name="x", type="float", null_count=0)],
        created_at=now,
        updated_at=now,
    )
    context.new_uow().datasets.add(dataset)
    return dataset


def body(dataset_id: object, **changes: object) -> dict:
    return {
        "name": "nightly",
        "cron": "0 6 * * *",
        "timezone": "Europe/Berlin",
        "action": {"dataset_id": str(dataset_id), "steps": METRICS},
        **changes,
    }


def test_create_list_detail_patch_run_runs_delete(client: TestClient, fake_context) -> None:
    dataset = add_dataset(fake_context)
    created = client.post("/api/v1/schedules", json=body(dataset.id))
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert created.headers["Location"] == f"/api/v1/schedules/{schedule['id']}"
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run > datetime.now(UTC)
    assert next_run.astimezone(ZoneInfo("Europe/Berlin")).hour == 6
    url = f"/api/v1/schedules/{schedule['id']}"

    page = client.get("/api/v1/schedules", params={"limit": 1}).json()
    assert [s["id"] for s in page["items"]] == [schedule["id"]] and page["next_cursor"] is None
    assert client.get(url).json()["next_run_at"] == schedule["next_run_at"]

    paused = client.patch(url, json={"enabled": False})
    assert paused.status_code == 200 and paused.json()["next_run_at"] is None
    resumed = client.patch(url, json={"enabled": True, "interval_seconds": 3600})
    assert resumed.json()["cron"] is None and resumed.json()["next_run_at"] is not None

    run = client.post(f"{url}/run")
    assert run.status_code == 202, run.text
    assert run.json()["outcome"] == "submitted" and run.json()["manual"] is True
    assert fake_context.queue.jobs == [UUID(run.json()["job_id"])]
    runs = client.get(f"{url}/runs").json()
    assert [(r["job_id"], r["job_status"]) for r in runs["items"]] == [
        (run.json()["job_id"], "queued")
    ]

    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404


def test_bad_cron_timezone_steps_and_action_are_4xx_naming_the_field(
    client: TestClient, fake_context
) -> None:
    dataset = add_dataset(fake_context)
    cases = [
        (body(dataset.id, cron="61 * * * *"), "cron"),
        (body(dataset.id, cron="0 0 1 1 * 0 2030"), "cron"),  # seconds and year: not 5 fields
        (body(dataset.id, cron="0 0 31 2 *"), "cron"),  # no February 31st: no due time
        (body(dataset.id, timezone="Nowhere/City"), "timezone"),
        (body(dataset.id, cron=None), "cron"),
        (body(dataset.id, cron=None, interval_seconds=-5), "interval_seconds"),
    ]
    for sent, field in cases:
        answer = client.post("/api/v1/schedules", json=sent)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"]["field"] == field
    bad_steps = body(dataset.id)
    bad_steps["action"]["steps"] = [{"processor": "zscore-ish"}]
    answer = client.post("/api/v1/schedules", json=bad_steps)
    assert answer.status_code == 422
    assert answer.json()["error"]["details"]["field"] == "action.steps[0].processor"
    both = body(dataset.id)
    both["action"]["source_url"] = "https://example.com/a.csv"
    assert client.post("/api/v1/schedules", json=both).status_code == 422
    no_format = body(None)
    no_format["action"] = {"source_url": "https://example.com/data", "steps": METRICS}
    assert client.post("/api/v1/schedules", json=no_format).status_code == 415
    refused = body(None)
    refused["action"] = {"source_url": "file:///etc/passwd.csv", "steps": METRICS}
    answer = client.post("/api/v1/schedules", json=refused)
    assert answer.status_code == 422 and answer.json()["error"]["details"]["field"] == "url"
    bad_export = body(dataset.id)
    bad_export["action"]["export"] = {"destination": "w", "table": "x; drop", "mode": "append"}
    assert client.post("/api/v1/schedules", json=bad_export).status_code == 422


def test_another_owner_gets_404(client: TestClient, fake_context) -> None:
    dataset = add_dataset(fake_context)
    schedule = client.post("/api/v1/schedules", json=body(dataset.id)).json()
    _, secret = create_key(fake_context.new_uow(), owner_id="mallory", scope=KeyScope.write)
    them = {"Authorization": f"Bearer {secret}"}
    url = f"/api/v1/schedules/{schedule['id']}"
    assert client.get(url, headers=them).status_code == 404
    assert client.get(f"{url}/runs", headers=them).status_code == 404
    assert client.post(f"{url}/run", headers=them).status_code == 404
    assert client.patch(url, json={"enabled": False}, headers=them).status_code == 404
    assert client.delete(url, headers=them).status_code == 404
    assert client.get("/api/v1/schedules", headers=them).json()["items"] == []
    # Nor can a schedule name another owner's dataset.
    theirs = client.post("/api/v1/schedules", json=body(dataset.id), headers=them)
    assert theirs.status_code == 404


def test_a_cron_without_due_times_is_a_422_on_patch(client: TestClient, fake_context) -> None:
    dataset = add_dataset(fake_context)
    created = client.post("/api/v1/schedules", json=body(dataset.id)).json()
    url = f"/api/v1/schedules/{created['id']}"
    for cron in ("0 0 31 2 *", "0 0 1 1 * 0 2030"):
        answer = client.patch(url, json={"cron": cron})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"]["field"] == "cron"
    assert client.get(url).json()["cron"] == "0 6 * * *"


def test_an_export_table_may_name_a_schema_like_an_export(client: TestClient, fake_context) -> None:
    dataset = add_dataset(fake_context)
    fake_context.settings.destinations = {"warehouse": SecretStr("postgresql://w/db")}
    sent = body(dataset.id)
    export = {"destination": "warehouse", "table": "sales.daily", "mode": "append"}
    sent["action"]["export"] = export
    created = client.post("/api/v1/schedules", json=sent)
    assert created.status_code == 201, created.text
    assert created.json()["action"]["export"]["table"] == "sales.daily"
    sent["action"]["export"]["table"] = "sales.assay_rows"  # reserved, as for POST /exports
    answer = client.post("/api/v1/schedules", json=sent)
    assert answer.status_code == 422
    assert answer.json()["error"]["details"]["field"] == "action.export.table"
