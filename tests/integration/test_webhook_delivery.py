"""Webhooks on the real stack: the outbox in SQL (PostgreSQL and SQLite), the relay's lease,
and signed POSTs to a receiver on loopback through the address policy."""

import hashlib
import hmac
import ipaddress
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from ports.fetcher import UrlRefused
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.addresses import parse_networks
from schemas.domain.ids import new_id
from schemas.domain.records import Job, JobStatus, JobStep, KeyScope, Principal
from schemas.domain.webhooks import DeliveryStatus, WebhookEvent
from services.adapters.webhook_sender import HttpWebhookSender
from tests.fixtures.http_servers import body, serve
from use_cases.lifecycle import claim_job, complete_job, create_job, move_job
from use_cases.webhooks import SIGNATURE_HEADER, create_webhook, relay_deliveries

ALICE = Principal(owner_id="alice", scope=KeyScope.write)
LOOPBACK = parse_networks("127.0.0.1/32")


def finished_job(uow: SqlUnitOfWork, status: JobStatus) -> Job:
    now = datetime.now(UTC)
    job = Job(
        id=new_id(),
        owner_id=ALICE.owner_id,
        dataset_id=None,
        status=JobStatus.queued,
        steps=[JobStep(processor="metrics")],
        created_at=now,
        updated_at=now,
    )
    with uow:
        create_job(uow, job)
        claimed = claim_job(uow, job.id, "w1")
        assert claimed is not None
        if status == JobStatus.completed:
            assert complete_job(uow, claimed, {"steps": []}, [])
        else:
            assert move_job(uow, job.id, JobStatus.running, status, attempt=1)
        uow.commit()
    return job


def test_a_finished_job_reaches_a_loopback_receiver_signed(uow: SqlUnitOfWork) -> None:
    with serve() as receiver:
        receiver.routes["/hook"] = body(b"", status=204)
        sender = HttpWebhookSender(LOOPBACK)
        url = receiver.url("/hook")
        webhook = create_webhook(uow, sender, ALICE, url=url, events=list(WebhookEvent))
        job = finished_job(uow, JobStatus.failed)
        assert relay_deliveries(lambda: uow, sender) == 1
        assert len(receiver.bodies) == 1
        raw = receiver.bodies[0]
        headers = receiver.requests[0][1]
        digest = hmac.new(webhook.secret.encode(), raw, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == f"sha256={digest}"
        assert json.loads(raw)["data"]["job_id"] == str(job.id)
    with uow:
        (delivery,) = uow.webhook_deliveries.list_for_webhook(ALICE, webhook.id)
    assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.delivered, 204)


def test_a_failing_receiver_is_retried_later_with_its_answer_kept(uow: SqlUnitOfWork) -> None:
    with serve() as receiver:
        receiver.routes["/hook"] = body(b"busy", status=503)
        sender = HttpWebhookSender(LOOPBACK)
        webhook = create_webhook(
            uow, sender, ALICE, url=receiver.url("/hook"), events=[WebhookEvent.job_completed]
        )
        finished_job(uow, JobStatus.completed)
        before = datetime.now(UTC)
        assert relay_deliveries(lambda: uow, sender) == 1
        assert relay_deliveries(lambda: uow, sender) == 0  # not due yet
    with uow:
        (delivery,) = uow.webhook_deliveries.list_for_webhook(ALICE, webhook.id)
    assert delivery.status == DeliveryStatus.pending and delivery.attempts == 1
    assert delivery.last_status_code == 503
    assert delivery.next_attempt_at is not None
    assert delivery.next_attempt_at >= before + timedelta(seconds=9)


def test_two_relays_never_send_one_delivery_twice(migrated_database_url: str) -> None:
    from db.engine import make_engine

    engine = make_engine(migrated_database_url)
    try:
        setup = SqlUnitOfWork(engine)
        with serve() as receiver:
            receiver.routes["/hook"] = body(b"", status=200)
            sender = HttpWebhookSender(LOOPBACK)
            create_webhook(
                setup, sender, ALICE, url=receiver.url("/hook"), events=[WebhookEvent.job_failed]
            )
            for _ in range(20):
                finished_job(setup, JobStatus.failed)
            errors: list[BaseException] = []

            def relay() -> None:
                try:
                    while relay_deliveries(lambda: SqlUnitOfWork(engine), sender, limit=3):
                        pass
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=relay) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not errors
            ids = [json.loads(raw)["id"] for raw in receiver.bodies]
            assert len(ids) == len(set(ids)) == 20
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "169.254.169.254", "127.0.0.1", "::1", "fd00::1", "192.168.0.1"]
)
def test_private_loopback_and_metadata_addresses_are_refused_before_connecting(
    address: str,
) -> None:
    # The name resolves to the address; nothing is listed as allowed; no connection is made.
    sender = HttpWebhookSender(resolver=lambda host, port: [ipaddress.ip_address(address)])
    with pytest.raises(UrlRefused, match="ASSAY_WEBHOOK_ALLOWED_NETWORKS"):
        sender.check("https://hooks.example.com/x")
    with pytest.raises(UrlRefused):
        sender.send("https://hooks.example.com/x", b"{}", {})


def test_a_receiver_cannot_hold_or_flood_the_relay() -> None:
    import time
    from http.server import BaseHTTPRequestHandler

    from ports.webhooks import WebhookSendFailed
    from tests.fixtures.http_servers import endless

    def dripping(handler: BaseHTTPRequestHandler) -> None:
        # A status line a byte at a time: every read gets something, none times out alone.
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    with serve() as receiver:
        receiver.routes["/flood"] = endless(cap_bytes=2 * 1024**3)  # 2 GiB, never read
        receiver.routes["/drip"] = dripping
        sender = HttpWebhookSender(LOOPBACK, timeout_s=1.5)
        started = time.monotonic()
        assert sender.send(receiver.url("/flood"), b"{}", {}) == 200
        assert time.monotonic() - started < 5  # the status, not 2 GiB of body
        started = time.monotonic()
        with pytest.raises(WebhookSendFailed, match=r"within 1\.5 s"):
            sender.send(receiver.url("/drip"), b"{}", {})
        assert time.monotonic() - started < 4


def test_a_relay_whose_lease_was_taken_over_records_nothing(uow: SqlUnitOfWork) -> None:
    sender = HttpWebhookSender(LOOPBACK)
    create_webhook(uow, sender, ALICE, url="http://127.0.0.1:9/x", events=[WebhookEvent.job_failed])
    finished_job(uow, JobStatus.failed)
    now = datetime.now(UTC)
    with uow:
        (first,) = uow.webhook_deliveries.lease_due(now, now + timedelta(seconds=1), 10)
        uow.commit()
    later = now + timedelta(seconds=5)  # the first lease ran out; another relay takes it
    with uow:
        (second,) = uow.webhook_deliveries.lease_due(later, later + timedelta(seconds=120), 10)
        stale = uow.webhook_deliveries.record_attempt(
            first.id,
            leased_until=now + timedelta(seconds=1),
            status=DeliveryStatus.delivered,
            attempts=1,
            next_attempt_at=None,
            status_code=200,
            error=None,
            delivered_at=later,
        )
        uow.commit()
    assert second.id == first.id and stale is False
    with uow:
        (delivery,) = uow.webhook_deliveries.list_for_webhook(ALICE, second.webhook_id)
    assert delivery.status == DeliveryStatus.pending and delivery.attempts == 0
