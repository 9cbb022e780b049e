"""Limits with clear answers: write rate (429), storage quota (413), CORS, redirects."""

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.ratelimit import TokenBuckets
from ports.context import Context
from schemas.domain.records import DEFAULT_OWNER, KeyScope, Principal
from schemas.settings import Settings
from services.adapters.storage.s3 import S3ObjectStorage
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext
from tests.unit.test_owners_api import ALICE, seed
from use_cases.errors import QuotaExceeded
from use_cases.keys import create_key
from use_cases.quotas import check_quota

CSV = b"a,b\n1,2\n"
BIG = b"x" * 60


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def app_with(fake_context: FakeContext) -> Iterator[Callable[..., TestClient]]:
    """A function (**settings) -> a TestClient (admin key of the default owner) on those."""
    clients: list[TestClient] = []

    def make(context: FakeContext | None = None, **changes: Any) -> TestClient:
        base = context or fake_context
        settings = base.settings.model_copy(update=changes)
        app = create_app(replace(base, settings=settings), PollingJobWakeups())
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        _, secret = create_key(base.new_uow(), owner_id=DEFAULT_OWNER, scope=KeyScope.admin)
        client.headers.update(bearer(secret))
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def upload(client: TestClient, content: bytes = CSV, headers: dict[str, str] | None = None):
    return client.post("/api/v1/datasets", files={"file": ("d.csv", content)}, headers=headers)


# --- write rate -------------------------------------------------------------------------------


def test_a_bucket_allows_a_minutes_worth_then_the_rate():
    now = [0.0]
    buckets = TokenBuckets(3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(20.0)  # 3 a minute: one every 20 s
    assert buckets.take("b") == 0.0  # every key has its own
    now[0] = 20.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    now[0] = 10_000.0  # long idle: full again, never more than a minute's worth
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_writes_past_the_limit_get_429_with_retry_after(app_with, fake_context: FakeContext):
    client = app_with(rate_limit_writes_per_minute=2)
    job = {"dataset_id": str(UUID(int=1)), "steps": [{"processor": "metrics"}]}
    assert client.post("/api/v1/jobs", json=job).status_code == 404
    assert client.delete(f"/api/v1/datasets/{UUID(int=1)}").status_code == 404
    refused = client.post("/api/v1/jobs", json=job)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"] == {
        "limit_per_minute": 2,
        "retry_after_s": int(refused.headers["retry-after"]),
    }
    assert upload(client).status_code == 429
    # Reads are not limited, nor is another owner.
    assert client.get("/api/v1/datasets").status_code == 200
    _, other = create_key(fake_context.new_uow(), owner_id="bob", scope=KeyScope.write)
    assert upload(client, headers=bearer(other)).status_code == 201


def test_a_limit_of_zero_is_no_limit(app_with):
    client = app_with(rate_limit_writes_per_minute=0)
    assert all(upload(client).status_code == 201 for _ in range(30))


def test_the_default_limit_is_600_a_minute():
    assert Settings(_env_file=None).rate_limit_writes_per_minute == 600


# --- storage quota ----------------------------------------------------------------------------


def test_an_upload_past_the_quota_is_413_with_the_figures(app_with, fake_context: FakeContext):
    client = app_with(owner_quota_bytes=100)
    assert upload(client, BIG).status_code == 201
    stored = dict(fake_context.datasets_storage.objects)
    refused = upload(client, BIG)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    details = error["details"]
    assert (details["used_bytes"], details["quota_bytes"]) == (60, 100)
    assert details["size_bytes"] >= 41 and details["size_is"] == "received_so_far"
    assert "60 of 100 bytes are used" in error["message"]
    assert fake_context.datasets_storage.objects == stored, "nothing of the refused upload kept"
    assert not list(fake_context.settings.tmp_dir.glob("upload-*"))
    # What fits still goes in; another owner has a quota of their own.
    assert upload(client, b"y" * 40).status_code == 201
    _, other = create_key(fake_context.new_uow(), owner_id="bob", scope=KeyScope.write)
    assert upload(client, BIG, headers=bearer(other)).status_code == 201


def test_a_declared_length_past_the_quota_is_refused_before_reading(app_with):
    client = app_with(owner_quota_bytes=1000)
    body = b"0" * 200_000
    refused = client.post(
        "/api/v1/datasets",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert refused.status_code == 413
    details = refused.json()["error"]["details"]
    assert details | {"size_bytes": 0} == {
        "used_bytes": 0,
        "quota_bytes": 1000,
        "size_bytes": 0,
        "size_is": "request_body",
    }
    assert details["size_bytes"] == len(body)


def test_the_quota_counts_every_dataset_of_the_owner(fake_context: FakeContext):
    uow = fake_context.new_uow()
    alice = Principal(owner_id=ALICE, scope=KeyScope.write)
    seed(fake_context)  # one 4-byte dataset of alice's
    check_quota(uow, alice, size=96, quota=100)
    check_quota(uow, alice, size=10**12, quota=0)  # 0: unlimited
    with pytest.raises(QuotaExceeded) as refused:
        check_quota(uow, alice, size=97, quota=100)
    assert refused.value.details == {
        "used_bytes": 4,
        "quota_bytes": 100,
        "size_bytes": 97,
        "size_is": "file",
    }


def test_no_quota_by_default():
    assert Settings(_env_file=None).owner_quota_bytes == 0


# --- browsers ---------------------------------------------------------------------------------

PREFLIGHT = {
    "Origin": "https://evil.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization",
}


def test_cors_is_off_by_default(client: TestClient):
    preflight = client.options("/api/v1/datasets", headers=PREFLIGHT)
    assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]
    simple = client.get("/api/v1/datasets", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_configured_origins_may_call_with_their_key(app_with):
    client = app_with(cors_origins="https://app.example.com, https://admin.example.com")
    allowed = client.options(
        "/api/v1/datasets", headers=PREFLIGHT | {"Origin": "https://app.example.com"}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    other = client.options("/api/v1/datasets", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in other.headers
    listed = client.get("/api/v1/datasets", headers={"Origin": "https://admin.example.com"})
    assert listed.headers["access-control-allow-origin"] == "https://admin.example.com"


def test_a_cross_site_form_post_without_the_key_is_refused(app_with, fake_context: FakeContext):
    client = app_with()
    del client.headers["Authorization"]
    # What a page elsewhere can make a browser send unasked: a form, with no Authorization.
    forged = client.post(
        "/api/v1/datasets",
        files={"file": ("d.csv", CSV)},
        headers={"Origin": "https://evil.example", "Cookie": "session=whatever"},
    )
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "unauthenticated"
    assert not fake_context.datasets_storage.objects


# --- redirects --------------------------------------------------------------------------------


def test_artifact_redirects_come_from_configuration_not_the_host_header(
    fake_context: FakeContext,
):
    results = S3ObjectStorage(
        "job-results",
        endpoint_url="http://minio.internal:9000",
        public_endpoint_url="https://files.example.com",
        access_key_id="key",
        secret_access_key="secret",
    )
    owned = seed(fake_context)
    context = Context(
        settings=fake_context.settings,
        new_uow=fake_context.new_uow,
        datasets_storage=fake_context.datasets_storage,
        results_storage=results,
        queue=fake_context.queue,
        fetcher=fake_context.fetcher,
        webhook_sender=fake_context.webhook_sender,
    )
    _, secret = create_key(context.new_uow(), owner_id=ALICE, scope=KeyScope.read)
    app = create_app(context, PollingJobWakeups())
    with TestClient(app, base_url="http://evil.example") as client:
        response = client.get(
            f"/api/v1/jobs/{owned.job_id}/artifacts/summary.json",
            headers=bearer(secret) | {"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
            follow_redirects=False,
        )
    assert response.status_code == 307, response.text
    assert response.headers["location"].startswith("https://files.example.com/job-results/")


def test_no_redirect_is_built_from_the_request(client: TestClient):
    response = client.get(
        "/api/v1/datasets/", headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "location" not in response.headers


# --- pages ------------------------------------------------------------------------------------


def test_the_key_list_is_paged_like_the_others(client: TestClient, fake_context: FakeContext):
    for owner in ("bob", "carol", "dave"):
        create_key(fake_context.new_uow(), owner_id=owner)
    everything = [k["id"] for k in client.get("/api/v1/keys").json()]
    assert len(everything) == 4  # with the client's own key
    first = client.get("/api/v1/keys", params={"limit": 3}).json()
    rest = client.get("/api/v1/keys", params={"limit": 3, "after": first[-1]["id"]}).json()
    assert [k["id"] for k in first + rest] == everything
    assert client.get("/api/v1/keys", params={"limit": 1001}).status_code == 422
