"""API keys, for admin keys: create (the secret is in the response, once), list, revoke.

Admin keys are the operator's: they manage the keys of every owner.
"""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.auth import AdminDep
from api.deps import UowDep
from api.openapi import READ, WRITE, errors
from schemas.api import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from schemas.domain.records import ApiKey
from use_cases.keys import create_key, list_keys, revoke_key

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key.model_dump(exclude={"secret_hash"}))


@router.post("", status_code=201, responses=errors(400, *WRITE))
async def create(body: ApiKeyCreate, uow: UowDep, _: AdminDep) -> ApiKeyCreated:
    """Create a key for an owner; the response is the only time its secret is shown."""
    key, secret = await run_in_threadpool(
        create_key, uow, owner_id=body.owner, name=body.name, scope=body.scope
    )
    return ApiKeyCreated(**key_out(key).model_dump(), secret=secret)


@router.get("", responses=errors(403, *READ))
async def list_all(
    uow: UowDep,
    _: AdminDep,
    owner: str | None = None,
    after: Annotated[UUID | None, Query(description="the last key id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[ApiKeyOut]:
    """Keys (of one owner with `owner`), oldest first, without secrets; a page shorter than
    `limit` is the last, else pass its last id as `after` for the next."""
    keys = await run_in_threadpool(list_keys, uow, owner, after=after, limit=limit)
    return [key_out(k) for k in keys]


@router.post("/{key_id}/revoke", responses=errors(404, *WRITE))
async def revoke(key_id: UUID, uow: UowDep, _: AdminDep) -> ApiKeyOut:
    """Revoke a key: refused from the next request on."""
    return key_out(await run_in_threadpool(revoke_key, uow, key_id))
