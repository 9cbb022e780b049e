"""Webhooks: subscribe, outcomes written to the outbox with the outcome, signed deliveries
retried with backoff, and every read scoped to its owner."""

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ports.webhooks import WebhookSendFailed
from schemas.domain.ids import new_id
from schemas.domain.records import Job, JobStatus, JobStep, KeyScope, Principal
from schemas.domain.webhooks import DeliveryStatus, WebhookEvent
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fake_webhooks import FakeWebhookSender
from tests.fakes import FakeContext, FakeUnitOfWork
from use_cases.errors import InvalidParams
from use_cases.keys import create_key
from use_cases.lifecycle import claim_job, complete_job, create_job, move_job
from use_cases.webhooks import (
    MAX_ATTEMPTS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    create_webhook,
    relay_deliveries,
    retry_delay_s,
)

ALICE = Principal(owner_id="alice", scope=KeyScope.write)
BOB = Principal(owner_id="bob", scope=KeyScope.write)
URL = "https://hooks.example.com/assay"


def new_job(uow: FakeUnitOfWork, owner: Principal = ALICE) -> Job:
    now = datetime.now(UTC)
    job = Job(
        id=new_id(),
        owner_id=owner.owner_id,
        dataset_id=None,
        status=JobStatus.queued,
        steps=[JobStep(processor="metrics")],
        created_at=now,
        updated_at=now,
    )
    create_job(uow, job)
    return job


def finish(uow: FakeUnitOfWork, job: Job, status: JobStatus) -> None:
    claimed = claim_job(uow, job.id, "w1")
    assert claimed is not None
    if status == JobStatus.completed:
        assert complete_job(uow, claimed, {"steps": []}, [])
    else:
        assert move_job(uow, job.id, JobStatus.running, status, attempt=claimed.attempts)


def test_each_outcome_reaches_only_the_webhooks_that_want_it() -> None:
    uow, sender = FakeUnitOfWork(), FakeWebhookSender()
    everything = create_webhook(uow, sender, ALICE, url=URL, events=list(WebhookEvent))
    failures = create_webhook(uow, sender, ALICE, url=URL, events=[WebhookEvent.job_failed])
    create_webhook(uow, sender, BOB, url=URL, events=list(WebhookEvent))
    for status in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled):
        finish(uow, new_job(uow), status)
    sent = {
        (d.webhook_id, d.event) for d in uow.webhook_deliveries.rows.values() if d.attempts == 0
    }
    assert sent == {
        (everything.id, WebhookEvent.job_completed),
        (everything.id, WebhookEvent.job_failed),
        (everything.id, WebhookEvent.job_cancelled),
        (failures.id, WebhookEvent.job_failed),
    }


def test_a_delivery_is_signed_with_the_webhooks_secret_over_the_raw_body() -> None:
    uow, sender = FakeUnitOfWork(), FakeWebhookSender()
    webhook = create_webhook(uow, sender, ALICE, url=URL, events=[WebhookEvent.job_completed])
    assert webhook.secret.startswith("whsec_") and len(webhook.secret) > 40
    job = new_job(uow)
    finish(uow, job, JobStatus.completed)
    assert relay_deliveries(lambda: uow, sender) == 1
    url, body, headers = sender.sent[0]
    assert url == URL
    expected = hmac.new(webhook.secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert abs(int(headers[TIMESTAMP_HEADER]) - datetime.now(UTC).timestamp()) < 5
    document = json.loads(body)
    assert document["event"] == "job.completed"
    assert document["data"]["job_id"] == str(job.id)
    assert document["data"]["status"] == "completed"
    assert headers["X-Assay-Delivery"] == document["id"]
    (delivery,) = uow.webhook_deliveries.rows.values()
    assert delivery.status == DeliveryStatus.delivered and delivery.attempts == 1
    assert relay_deliveries(lambda: uow, sender) == 0  # delivered once, not again


def fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def test_failures_are_retried_with_backoff_then_given_up() -> None:
    uow = FakeUnitOfWork()
    answers: list[int | Exception] = [500, WebhookSendFailed("connection refused")] * MAX_ATTEMPTS
    sender = FakeWebhookSender(answers)
    create_webhook(uow, sender, ALICE, url=URL, events=[WebhookEvent.job_failed])
    finish(uow, new_job(uow), JobStatus.failed)
    clock = datetime.now(UTC)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert relay_deliveries(lambda: uow, sender, now=fixed(clock)) == 1
        (delivery,) = uow.webhook_deliveries.rows.values()
        assert delivery.attempts == attempt
        if attempt < MAX_ATTEMPTS:
            assert delivery.status == DeliveryStatus.pending
            assert delivery.next_attempt_at == clock + timedelta(seconds=retry_delay_s(attempt))
            # Not due before its time.
            early = clock + timedelta(seconds=retry_delay_s(attempt) - 1)
            assert relay_deliveries(lambda: uow, sender, now=fixed(early)) == 0
            clock += timedelta(seconds=retry_delay_s(attempt))
    assert delivery.status == DeliveryStatus.failed
    assert delivery.last_error in ("the receiver answered 500", "connection refused")
    assert [retry_delay_s(n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]
    assert retry_delay_s(30) == 3600.0


def test_a_url_to_a_private_or_metadata_address_is_refused_at_creation() -> None:
    uow, sender = FakeUnitOfWork(), FakeWebhookSender()
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://localhost/"):
        with pytest.raises(InvalidParams) as refused:
            create_webhook(uow, sender, ALICE, url=url, events=[WebhookEvent.job_failed])
        assert refused.value.details == {"field": "url"}
    assert uow.webhooks.rows == {}


@pytest.fixture
def as_owner(fake_context: FakeContext) -> Iterator:
    app = create_app(fake_context, PollingJobWakeups())
    with TestClient(app, raise_server_exceptions=False) as base:

        def client(owner: str, scope: KeyScope = KeyScope.write) -> TestClient:
            _, secret = create_key(fake_context.new_uow(), owner_id=owner, scope=scope)
            base.headers["Authorization"] = f"Bearer {secret}"
            return base

        yield client


def test_the_api_shows_the_secret_once_and_scopes_everything_to_the_owner(
    as_owner, fake_context: FakeContext
) -> None:
    alice = as_owner("alice")
    created = alice.post("/api/v1/webhooks", json={"url": URL, "events": ["job.completed"]})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    base = f"/api/v1/webhooks/{hook['id']}"
    shown = alice.get(base).json()
    assert "secret" not in shown and shown["events"] == ["job.completed"]
    assert [w["id"] for w in alice.get("/api/v1/webhooks").json()["items"]] == [hook["id"]]
    uow = fake_context.new_uow()
    job = new_job(uow, Principal(owner_id="alice", scope=KeyScope.write))
    finish(uow, job, JobStatus.completed)
    (delivery,) = alice.get(f"{base}/deliveries").json()["items"]
    assert (delivery["event"], delivery["status"]) == ("job.completed", "pending")
    assert delivery["subject_id"] == str(job.id)

    bob = as_owner("bob")
    assert bob.get("/api/v1/webhooks").json()["items"] == []
    for url in (base, f"{base}/deliveries"):
        assert bob.get(url).status_code == 404, url
    assert bob.delete(base).status_code == 404
    reader = as_owner("alice", KeyScope.read)
    assert reader.delete(base).status_code == 403
    alice = as_owner("alice")
    assert alice.delete(base).status_code == 204
    assert alice.get(base).status_code == 404
    assert UUID(hook["id"]) not in fake_context.new_uow().webhooks.rows


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"url": URL, "events": ["job.exploded"]}, "events"),
        ({"url": URL, "events": []}, "events"),
        ({"url": "ftp://example.com/x", "events": ["job.failed"]}, "url"),
        ({"url": "http://10.0.0.1/x", "events": ["job.failed"]}, "url"),
        ({"url": "http://xn--/", "events": ["job.failed"]}, "url"),  # a malformed IDNA host
        ({"url": "x" * 3000, "events": ["job.failed"]}, "url"),
    ],
)
def test_bad_webhooks_are_refused_saying_where(as_owner, body: dict, where: str) -> None:
    response = as_owner("alice").post("/api/v1/webhooks", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert where in response.text


def test_the_workers_relay_thread_sends_what_an_outcome_wrote(fake_context: FakeContext) -> None:
    import time

    from workers.webhook_relay import start_webhook_relay_thread

    uow, sender = fake_context.new_uow(), fake_context.webhook_sender
    create_webhook(uow, sender, ALICE, url=URL, events=[WebhookEvent.job_completed])
    stop = start_webhook_relay_thread(lambda: fake_context)
    try:
        finish(uow, new_job(uow), JobStatus.completed)
        deadline = time.monotonic() + 10
        while not sender.sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    assert len(sender.sent) == 1


def test_schedule_runs_and_export_outcomes_are_announced_too() -> None:
    from schemas.domain.exports import Export, ExportMode, ExportStatus
    from schemas.domain.records import ColumnInfo, Dataset, DatasetFormat, DatasetStatus
    from schemas.domain.schedules import ScheduleAction
    from tests.fakes import FakeQueue
    from use_cases.schedules import create_schedule, run_due_schedules
    from use_cases.webhooks import announce_export

    uow, sender, queue = FakeUnitOfWork(), FakeWebhookSender(), FakeQueue()
    create_webhook(uow, sender, ALICE, url=URL, events=list(WebhookEvent))
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    dataset = Dataset(
        id=new_id(),
        owner_id="alice",
        name="d",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=10,
        sha256="a" * 64,
        storage_key="k",
        columns=[ColumnInfo(name="x", type="float", null_count=0)],
        created_at=now,
        updated_at=now,
    )
    uow.datasets.add(dataset)
    action = ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "metrics", "params": {}}])
    schedule = create_schedule(
        uow, ALICE, name="hourly", action=action, now=now, cron=None,
        interval_seconds=60, timezone="UTC", enabled=True,
    )  # fmt: skip
    assert run_due_schedules(uow, queue, now + timedelta(seconds=61)) == 1
    export = Export(
        id=new_id(),
        owner_id="alice",
        dataset_id=dataset.id,
        destination="warehouse",
        table_name="daily",
        mode=ExportMode.replace,
        status=ExportStatus.failed,
        error={"type": "DestinationError", "message": "permission denied"},
        created_at=now,
        updated_at=now,
    )
    uow.exports.add(export)
    assert announce_export(uow, export.id) == 1
    sent = {d.event: d for d in uow.webhook_deliveries.rows.values()}
    assert set(sent) == {WebhookEvent.schedule_run, WebhookEvent.export_failed}
    run = sent[WebhookEvent.schedule_run]
    assert run.subject_id == schedule.id and run.payload["outcome"] == "submitted"
    assert run.payload["job_id"] is not None
    assert sent[WebhookEvent.export_failed].payload["error"]["message"] == "permission denied"
