"""What owners store (GET /usage), and for admins every owner's figures and the retention
sweep's dry run."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.auth import AdminDep, PrincipalDep
from api.deps import SettingsDep, UowDep
from api.openapi import READ, errors
from ports.repositories import OwnerUsage
from schemas.domain.records import KeyScope
from use_cases.errors import Forbidden
from use_cases.retention import RetentionItem, RetentionPolicy, list_expired, usage, usage_of_owners

router = APIRouter(prefix="/api/v1", tags=["usage"])

OwnerQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=64, description="Another owner's figures (admin keys only)"),
]


@router.get("/usage", responses=errors(403, *READ))
async def own_usage(uow: UowDep, principal: PrincipalDep, owner: OwnerQuery = None) -> OwnerUsage:
    """The caller's stored bytes (dataset originals, typed copies, artifacts) and counts of
    datasets and jobs by status. An admin key may name another `owner`."""
    if owner is None or owner == principal.owner_id:
        return await run_in_threadpool(usage, uow, principal)
    if not principal.scope.allows(KeyScope.admin):
        raise Forbidden(
            "only an admin key may read another owner's usage",
            {"field": "owner", "scope": principal.scope.value, "required": "admin"},
        )
    (found,) = await run_in_threadpool(usage_of_owners, uow, [owner])
    return found


@router.get("/admin/usage", responses=errors(403, *READ))
async def all_usage(uow: UowDep, _: AdminDep) -> list[OwnerUsage]:
    """Every owner's usage, by owner id (owners with at least one dataset or job)."""
    return await run_in_threadpool(usage_of_owners, uow)


@router.get("/admin/retention", responses=errors(403, *READ))
async def retention_dry_run(
    uow: UowDep,
    settings: SettingsDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[RetentionItem]:
    """What the retention sweep would delete now and why (finished jobs first, then unused
    datasets), at most `limit` items; nothing is deleted."""
    policy = RetentionPolicy.from_settings(settings)
    return await run_in_threadpool(list_expired, uow, policy, datetime.now(UTC), limit=limit)
