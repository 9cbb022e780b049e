"""API keys: how they are made and stored, and what the API does with them (over fakes)."""

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ports.context import Context
from schemas.domain.records import KeyScope
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeUnitOfWork
from use_cases.keys import KEY_PREFIX, authenticate, create_key, hash_secret, revoke_key


def test_a_key_is_a_prefixed_high_entropy_token_stored_only_as_its_hash():
    uow = FakeUnitOfWork()
    key, secret = create_key(uow, owner_id="alice", name="laptop", scope=KeyScope.read)
    other_key, other = create_key(uow, owner_id="alice")

    assert secret.startswith(KEY_PREFIX) and len(secret) >= len(KEY_PREFIX) + 40
    assert secret != other
    assert key.secret_hash == hash_secret(secret) and secret not in key.model_dump_json()
    assert secret.startswith(key.prefix) and len(key.prefix) < len(secret) // 3
    assert (key.owner_id, key.name, key.scope) == ("alice", "laptop", KeyScope.read)
    assert other_key.scope == KeyScope.write  # the default


def test_authenticate_gives_the_principal_until_the_key_is_revoked():
    uow = FakeUnitOfWork()
    key, secret = create_key(uow, owner_id="alice", scope=KeyScope.admin)

    principal = authenticate(uow, secret)
    assert principal is not None
    assert (principal.owner_id, principal.scope, principal.key_id) == ("alice", "admin", key.id)
    assert uow.api_keys.get(key.id).last_used_at is not None  # type: ignore[union-attr]

    revoke_key(uow, key.id)
    assert authenticate(uow, secret) is None
    assert authenticate(uow, secret + "x") is None
    assert authenticate(uow, "") is None


@pytest.mark.parametrize("owner", ["", "has space", "-leading-dash", "x" * 65, "slash/no"])
def test_an_owner_name_is_checked(owner: str):
    from use_cases.errors import InvalidParams

    with pytest.raises(InvalidParams):
        create_key(FakeUnitOfWork(), owner_id=owner)


@pytest.fixture
def open_client(fake_context: Context) -> Iterator[TestClient]:
    """The API with no key at all: nothing in the request says who is calling."""
    with TestClient(create_app(fake_context, PollingJobWakeups())) as client:
        yield client


def test_no_key_is_401_with_a_bearer_challenge(open_client: TestClient):
    response = open_client.get("/api/v1/datasets")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="assay"'
    assert response.json()["error"]["code"] == "unauthenticated"
    basic = open_client.get("/api/v1/datasets", headers={"Authorization": "Basic dTpw"})
    assert basic.status_code == 401


def test_health_and_live_are_open_ready_and_metrics_only_on_loopback(fake_context: Context):
    app = create_app(fake_context, PollingJobWakeups())
    with TestClient(app, client=("203.0.113.9", 40000)) as remote:
        assert remote.get("/health").status_code == 200
        assert remote.get("/live").status_code == 200
        assert remote.get("/ready").status_code == 401
        assert remote.get("/metrics").status_code == 401
        _, secret = create_key(fake_context.new_uow(), owner_id="prometheus", scope=KeyScope.read)
        authorized = {"Authorization": f"Bearer {secret}"}
        assert remote.get("/metrics", headers=authorized).status_code == 200
        assert remote.get("/ready", headers=authorized).status_code == 200
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert local.get("/ready").status_code == 200
        assert local.get("/metrics").status_code == 200


def test_admin_keys_manage_keys_and_others_may_not(open_client: TestClient, fake_context):
    _, admin = create_key(fake_context.new_uow(), owner_id="ops", scope=KeyScope.admin)
    _, writer = create_key(fake_context.new_uow(), owner_id="alice", scope=KeyScope.write)
    as_admin = {"Authorization": f"Bearer {admin}"}

    created = open_client.post("/api/v1/keys", json={"owner": "bob"}, headers=as_admin)
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    listed = open_client.get("/api/v1/keys", headers=as_admin).json()
    assert {k["owner_id"] for k in listed} == {"ops", "alice", "bob"}
    assert secret not in str(listed) and all("secret_hash" not in k for k in listed)
    as_bob = {"Authorization": f"Bearer {secret}"}
    assert open_client.get("/api/v1/datasets", headers=as_bob).status_code == 200

    as_writer = {"Authorization": f"Bearer {writer}"}
    assert open_client.get("/api/v1/keys", headers=as_writer).status_code == 403
    forbidden = open_client.post("/api/v1/keys", json={"owner": "x"}, headers=as_writer)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"

    revoked = open_client.post(f"/api/v1/keys/{created.json()['id']}/revoke", headers=as_admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert open_client.get("/api/v1/datasets", headers=as_bob).status_code == 401
    missing = "00000000-0000-7000-8000-000000000000"
    assert open_client.post(f"/api/v1/keys/{missing}/revoke", headers=as_admin).status_code == 404


def test_with_authentication_off_requests_act_as_the_default_owner(fake_context: Context):
    settings = fake_context.settings.model_copy(update={"auth_required": False})
    app = create_app(replace(fake_context, settings=settings), PollingJobWakeups())
    with TestClient(app) as client:
        assert client.get("/api/v1/datasets").status_code == 200
