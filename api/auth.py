"""Who is calling: the principal of the request's API key, and the scope a route needs.

Every /api/v1 router depends on `get_principal`, so a route cannot be reached without a valid
key even if it forgot to ask for one; routes that change state ask for `WriterDep`.
"""

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ports.context import Context
from schemas.domain.records import DEFAULT_OWNER, KeyScope, Principal
from use_cases.errors import Forbidden, Unauthenticated
from use_cases.keys import authenticate

# With authentication off (`assay serve` on loopback), every request acts as this owner.
OPEN_PRINCIPAL = Principal(owner_id=DEFAULT_OWNER, scope=KeyScope.admin)

# auto_error=False: a missing header gets our JSON 401, not FastAPI's 403. The scheme also
# puts the Authorize button and the bearer requirement into the OpenAPI document.
_bearer = HTTPBearer(auto_error=False, description="An API key: `assay keys create`.")


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller; 401 without a valid key (unless authentication is off)."""
    context: Context = request.app.state.context
    if not context.settings.auth_required:
        return OPEN_PRINCIPAL
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
    principal = await run_in_threadpool(authenticate, context.new_uow(), credentials.credentials)
    if principal is None:
        raise Unauthenticated("the API key is unknown or revoked")
    return principal


def _requiring(scope: KeyScope) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.scope.allows(scope):
            raise Forbidden(
                f"this key's scope is {principal.scope.value}; this needs {scope.value}",
                {"scope": principal.scope.value, "required": scope.value},
            )
        return principal

    return check


async def local_or_authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Operational endpoints (/ready, /metrics): open to loopback, a valid key elsewhere.

    Behind a proxy on the same host, uvicorn replaces the client address with the one in
    X-Forwarded-For (it trusts 127.0.0.1 by default), so remote callers still need a key.
    """
    host = request.client.host if request.client else ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass  # not an address (a test client's "testclient"): treat as remote
    await get_principal(request, credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
WriterDep = Annotated[Principal, Depends(_requiring(KeyScope.write))]
AdminDep = Annotated[Principal, Depends(_requiring(KeyScope.admin))]
