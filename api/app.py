"""FastAPI application factory."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from api.auth import PrincipalDep, get_principal
from api.body_limit import install_body_limit
from api.console import install_console
from api.errors import install_error_handlers
from api.logging import REQUEST_ID_HEADER, RequestId, bind_owner
from api.metrics import DatabaseStats, forget_this_process, install_metrics
from api.ratelimit import TokenBuckets, limit_writes
from api.routes import (
    datasets,
    exports,
    health,
    jobs,
    keys,
    processors,
    schedules,
    usage,
    webhooks,
)
from ports.context import Context
from ports.wakeups import JobWakeups

DOCS_ASSETS = "/docs-assets"
# Response headers a cross-site page may read.
CORS_EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "Idempotent-Replayed",
    "Content-Disposition",
    "ETag",
    "WWW-Authenticate",
    REQUEST_ID_HEADER,
]


async def _log_owner(principal: PrincipalDep) -> None:
    """The caller's owner joins the request's log context (async: see bind_owner)."""
    bind_owner(principal)


def create_app(
    context: Context,
    job_wakeups: JobWakeups,
    read_stats: Callable[[], DatabaseStats] | None = None,
) -> FastAPI:
    """The HTTP API over the given ports.

    `job_wakeups` tells job streams when to read again. It is started with the app (and
    lazily by the first stream) and closed at shutdown. `read_stats` reads the database's
    figures for /metrics (default: counts by status through the ports).
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await job_wakeups.start()
        try:
            yield
        finally:
            await job_wakeups.aclose()
            forget_this_process()

    # /docs and /redoc load their scripts and styles from this app (DOCS_ASSETS), never a CDN.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="Assay",
        version="0.1.0",
        description="Upload datasets, run processors on them in background workers, "
        "follow progress, cancel and download results.",
        lifespan=lifespan,
        # No redirect from /path/ to /path: Starlette builds it from the request's Host header.
        redirect_slashes=False,
    )
    settings = context.settings
    app.state.context = context
    app.state.job_wakeups = job_wakeups
    per_minute = settings.rate_limit_writes_per_minute
    app.state.write_buckets = TokenBuckets(per_minute) if per_minute else None
    api_routers: tuple[APIRouter, ...] = (
        datasets.router,
        jobs.router,
        processors.router,
        keys.router,
        webhooks.router,
    )
    api_routers = (*api_routers, usage.router)
    api_routers = (*api_routers, schedules.router)
    api_routers = (*api_routers, exports.router)
    install_error_handlers(app, (health.router, *api_routers))
    # Installed before the metrics so that they count its 413s too.
    install_body_limit(app, settings.max_json_body_bytes, exempt=datasets.STREAMED_BODIES)
    install_metrics(app, context.new_uow, read_stats)
    app.include_router(health.router)
    install_console(app)
    # Every /api/v1 route needs a principal, whether or not the route itself asks for one, and
    # an owner's writes are rate limited.
    for router in api_routers:
        app.include_router(
            router,
            dependencies=[Depends(get_principal), Depends(limit_writes), Depends(_log_owner)],
        )
    if settings.cors_origin_list:
        # Off unless configured: without these headers browsers refuse cross-site calls. Keys
        # travel in the Authorization header, never in cookies, so no credentials mode.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                REQUEST_ID_HEADER,
            ],
            expose_headers=CORS_EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=600,
        )
    _outermost(app, RequestId)
    return app


def _outermost(app: FastAPI, middleware: Callable[[ASGIApp], ASGIApp]) -> None:
    """Wrap the whole stack, outside Starlette's ServerErrorMiddleware: a 500 carries the
    request id too, and the error handler's log line has it (add_middleware goes inside)."""
    build = app.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        return middleware(build())

    app.build_middleware_stack = build_wrapped  # type: ignore[method-assign]
