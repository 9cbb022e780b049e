"""FastAPI application factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api.auth import get_principal
from api.errors import install_error_handlers
from api.metrics import install_metrics
from api.routes import datasets, health, jobs, keys, processors
from ports.context import Context
from ports.wakeups import JobWakeups


def create_app(context: Context, job_wakeups: JobWakeups) -> FastAPI:
    """The HTTP API over the given ports.

    `job_wakeups` tells job streams when to read again. It is started with the app (and
    lazily by the first stream) and closed at shutdown.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await job_wakeups.start()
        try:
            yield
        finally:
            await job_wakeups.aclose()

    app = FastAPI(
        title="Assay",
        version="0.1.0",
        description="Upload datasets, run processors on them in background workers, "
        "follow progress, cancel and download results.",
        lifespan=lifespan,
    )
    app.state.context = context
    app.state.job_wakeups = job_wakeups
    install_error_handlers(app)
    install_metrics(app, context.new_uow)
    app.include_router(health.router)
    # Every /api/v1 route needs a principal, whether or not the route itself asks for one.
    for router in (datasets.router, jobs.router, processors.router, keys.router):
        app.include_router(router, dependencies=[Depends(get_principal)])
    return app
