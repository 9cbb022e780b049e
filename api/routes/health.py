"""Liveness and readiness probes."""

import logging
from collections.abc import Callable

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.auth import local_or_authenticated
from api.deps import ContextDep
from api.openapi import errors
from schemas.api import HealthOut

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> HealthOut:
    """The API process answers."""
    return HealthOut(status="ok")


@router.get("/live")
async def live() -> HealthOut:
    """Liveness: the process is up (restart it if this fails)."""
    return HealthOut(status="ok")


@router.get(
    "/ready",
    responses=errors(401) | {503: {"model": HealthOut, "description": "A dependency is down"}},
    dependencies=[Depends(local_or_authenticated)],
)
async def ready(context: ContextDep) -> JSONResponse:
    """Readiness: database, storage and broker answer; names the one that does not."""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: context.new_uow().check(),
        "datasets_storage": context.datasets_storage.check,
        "results_storage": context.results_storage.check,
        "broker": context.queue.check,
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await run_in_threadpool(check)
            results[name] = "ok"
        except Exception as exc:
            # The body names what is down; where it runs (hosts, ports, paths) goes to the log.
            log.warning("readiness: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            results[name] = "unavailable"
    healthy = all(value == "ok" for value in results.values())
    body = HealthOut(status="ok" if healthy else "unavailable", checks=results)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
