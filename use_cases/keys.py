"""API keys: create (the secret is shown once), list, revoke, and authenticate a request."""

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from uuid import UUID

from ports.repositories import UnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.records import ApiKey, KeyScope, Principal
from use_cases.errors import InvalidParams, NotFound

# Recognisable in logs, configs and secret scanners; the rest is 256 random bits.
KEY_PREFIX = "assay_"
_SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 6
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# last_used_at is a hint, not an audit log: one write a minute per key keeps requests read-only.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    uow: UnitOfWork, *, owner_id: str, name: str | None = None, scope: KeyScope = KeyScope.write
) -> tuple[ApiKey, str]:
    """Create a key for an owner; returns the record and the secret (never stored)."""
    if not OWNER_PATTERN.match(owner_id):
        raise InvalidParams(
            "owner must be 1-64 characters: letters, digits and . _ @ - (not first)",
            {"field": "owner", "value": owner_id},
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id(),
        owner_id=owner_id,
        name=name,
        scope=KeyScope(scope),
        prefix=secret[:_SHOWN_PREFIX_LENGTH],
        secret_hash=hash_secret(secret),
        created_at=datetime.now(UTC),
    )
    with uow:
        uow.api_keys.add(key)
        uow.commit()
    return key, secret


def list_keys(
    uow: UnitOfWork,
    owner_id: str | None = None,
    *,
    after: UUID | None = None,
    limit: int | None = None,
) -> list[ApiKey]:
    """Every key, or one owner's, oldest first (at most `limit`, after the key `after`)."""
    with uow:
        return uow.api_keys.list_all(owner_id, after=after, limit=limit)


def revoke_key(uow: UnitOfWork, key_id: UUID) -> ApiKey:
    """Revoke a key: it is refused from the next request on."""
    with uow:
        key = uow.api_keys.get(key_id)
        if key is None:
            raise NotFound(f"key {key_id} not found", {"key_id": str(key_id)})
        uow.api_keys.revoke(key_id, datetime.now(UTC))
        uow.commit()
        revoked = uow.api_keys.get(key_id)
    assert revoked is not None
    return revoked


def authenticate(uow: UnitOfWork, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else."""
    if not secret.startswith(KEY_PREFIX):
        return None
    with uow:
        key = uow.api_keys.find_by_hash_for_authentication(hash_secret(secret))
        if key is None or key.revoked_at is not None:
            return None
        now = datetime.now(UTC)
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            uow.api_keys.mark_used(key.id, now)
            uow.commit(durable=False)
    return Principal(owner_id=key.owner_id, scope=key.scope, key_id=key.id)
