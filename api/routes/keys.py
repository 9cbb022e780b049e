"""API keys, for admin keys: create (the secret is in the response, once), list, revoke.

Admin keys are the operator's: they manage the keys of every owner.
"""

from typing import Any
from uuid import UUID

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.auth import AdminDep
from api.deps import UowDep
from schemas.api import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ErrorBody
from schemas.domain.records import ApiKey
from use_cases.keys import create_key, list_keys, revoke_key

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 422)
}


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key.model_dump(exclude={"secret_hash"}))


@router.post("", status_code=201, responses=ERRORS)
async def create(body: ApiKeyCreate, uow: UowDep, _: AdminDep) -> ApiKeyCreated:
    """Create a key for an owner; the response is the only time its secret is shown."""
    key, secret = await run_in_threadpool(
        create_key, uow, owner_id=body.owner, name=body.name, scope=body.scope
    )
    return ApiKeyCreated(**key_out(key).model_dump(), secret=secret)


@router.get("", responses=ERRORS)
async def list_all(uow: UowDep, _: AdminDep, owner: str | None = None) -> list[ApiKeyOut]:
    """Every key (of one owner with `owner`), without secrets."""
    return [key_out(k) for k in await run_in_threadpool(list_keys, uow, owner)]


@router.post("/{key_id}/revoke", responses=ERRORS)
async def revoke(key_id: UUID, uow: UowDep, _: AdminDep) -> ApiKeyOut:
    """Revoke a key: refused from the next request on."""
    return key_out(await run_in_threadpool(revoke_key, uow, key_id))
