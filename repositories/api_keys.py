"""SQL repository for API keys (stored as hashes)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import (
    Connection,
    CursorResult,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)

from db.models import ApiKeyRow
from repositories.datasets import record_values
from schemas.domain.records import ApiKey

API_KEYS: Table = ApiKeyRow.__table__  # type: ignore[assignment]  # a mapped class's table

# Built once (see repositories.datasets.by_id): every authenticated request runs it.
_BY_HASH = select(API_KEYS).where(API_KEYS.c.secret_hash == bindparam("secret_hash"))


class SqlApiKeyRepository:
    """API keys in the `api_keys` table."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, key: ApiKey) -> None:
        """Record a new key."""
        self._db.execute(insert(API_KEYS).values(record_values(API_KEYS, key)))

    def find_by_hash_for_authentication(self, secret_hash: str) -> ApiKey | None:
        """The key with this secret hash, revoked or not: unscoped, for authentication only."""
        row = self._db.execute(_BY_HASH, {"secret_hash": secret_hash}).mappings().one_or_none()
        return ApiKey.model_validate(row) if row is not None else None

    def get(self, key_id: UUID) -> ApiKey | None:
        """One key by id (keys are managed by admins across owners)."""
        query = select(API_KEYS).where(API_KEYS.c.id == key_id)
        row = self._db.execute(query).mappings().one_or_none()
        return ApiKey.model_validate(row) if row is not None else None

    def list_all(
        self, owner_id: str | None = None, *, after: UUID | None = None, limit: int | None = None
    ) -> list[ApiKey]:
        """Every key (of one owner when given), oldest first; at most `limit`, after `after`."""
        query = select(API_KEYS).order_by(API_KEYS.c.created_at, API_KEYS.c.id)
        if owner_id is not None:
            query = query.where(API_KEYS.c.owner_id == owner_id)
        if after is not None:
            since = select(API_KEYS.c.created_at).where(API_KEYS.c.id == after).scalar_subquery()
            query = query.where(
                or_(
                    API_KEYS.c.created_at > since,
                    and_(API_KEYS.c.created_at == since, API_KEYS.c.id > after),
                )
            )
        if limit is not None:
            query = query.limit(limit)
        return [ApiKey.model_validate(row) for row in self._db.execute(query).mappings()]

    def revoke(self, key_id: UUID, when: datetime) -> bool:
        """Mark a key revoked; False when it does not exist or was revoked already."""
        statement = (
            update(API_KEYS)
            .where(API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None))
            .values(revoked_at=when)
        )
        result: CursorResult[object] = self._db.execute(statement)
        return result.rowcount == 1

    def mark_used(self, key_id: UUID, when: datetime) -> None:
        """Record when a key was last used."""
        self._db.execute(update(API_KEYS).where(API_KEYS.c.id == key_id).values(last_used_at=when))
