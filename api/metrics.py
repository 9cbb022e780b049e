"""Prometheus metrics: HTTP traffic of this API process, and datasets and jobs by status."""

import time
from collections.abc import Callable, Iterator

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import local_or_authenticated
from ports.repositories import UnitOfWork
from schemas.domain.records import DatasetStatus, JobStatus


class StatusCollector(Collector):
    """Counts read from the database at scrape time: the truth, whichever process did the work."""

    def __init__(self, new_uow: Callable[[], UnitOfWork]) -> None:
        self._new_uow = new_uow

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._new_uow() as uow:
            datasets = uow.datasets.count_by_status()
            jobs = uow.jobs.count_by_status()
        for name, doc, counts, statuses in (
            ("assay_datasets", "Datasets by status.", datasets, DatasetStatus),
            ("assay_jobs", "Jobs by status.", jobs, JobStatus),
        ):
            family = GaugeMetricFamily(name, doc, labels=["status"])
            for status in statuses:
                family.add_metric([status.value], counts.get(status.value, 0))
            yield family


class _Observe:
    """Pure ASGI middleware (streams and uploads pass through untouched)."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
            self.requests.labels(scope["method"], route, str(status)).inc()


def install_metrics(app: FastAPI, new_uow: Callable[[], UnitOfWork]) -> None:
    """Serve GET /metrics and time every request by route template (not by raw path)."""
    registry = CollectorRegistry()
    requests = Counter(
        "assay_http_requests", "HTTP requests.", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "assay_http_request_duration_seconds",
        "HTTP request latency.",
        ["method", "route"],
        registry=registry,
    )
    registry.register(StatusCollector(new_uow))

    app.add_middleware(_Observe, requests=requests, latency=latency)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(local_or_authenticated)])
    async def metrics() -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
