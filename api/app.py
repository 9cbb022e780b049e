"""FastAPI application factory."""

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.metrics import install_metrics
from api.routes import datasets, health, jobs, processors
from ports.context import Context


def create_app(context: Context) -> FastAPI:
    """The HTTP API over the given ports."""
    app = FastAPI(
        title="Assay",
        version="0.1.0",
        description="Upload datasets, run processors on them in background workers, "
        "follow progress, cancel and download results.",
    )
    app.state.context = context
    install_error_handlers(app)
    install_metrics(app, context.new_uow)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(processors.router)
    return app
