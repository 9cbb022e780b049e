"""Prometheus metrics: HTTP traffic of the API (every process of it), and what the database holds.

`assay api` runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, a folder the
CLI makes per run): each process writes its samples to files there and a scrape, whichever
process answers it, adds them all up. Without that variable (tests, `assay serve`) the samples
live in this process only. Figures read from the database are the same whoever answers.
"""

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import local_or_authenticated
from ports.repositories import UnitOfWork
from schemas.domain.records import DatasetStatus, JobStatus

log = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Scrapes within this many seconds share one read of the database.
STATS_CACHE_S = 5.0


@dataclass(frozen=True)
class DatabaseStats:
    """What the database holds, read at scrape time. None: not known to this reader."""

    datasets: Mapping[str, int]  # count by status
    jobs: Mapping[str, int]  # count by status
    dataset_bytes: Mapping[str, int] | None = None  # uploaded size by status
    artifacts: int | None = None
    artifact_bytes: int | None = None
    oldest_queued_at: datetime | None = None  # created_at of the oldest queued job
    stalest_heartbeat_at: datetime | None = None  # oldest heartbeat of a running job
    stale_running: int | None = None  # running jobs silent past the heartbeat timeout
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def counts_from_ports(new_uow: Callable[[], UnitOfWork]) -> Callable[[], DatabaseStats]:
    """A reader that needs nothing beyond the repository ports: counts by status only."""

    def read() -> DatabaseStats:
        with new_uow() as uow:
            return DatabaseStats(
                datasets=uow.datasets.count_by_status(), jobs=uow.jobs.count_by_status()
            )

    return read


class StatusCollector(Collector):
    """Figures read from the database at scrape time: the truth, whichever process did the
    work. One read serves the scrapes of STATS_CACHE_S; a failed read drops these figures
    (assay_database_stats_up 0) instead of failing the scrape."""

    def __init__(self, read: Callable[[], DatabaseStats], cache_s: float = STATS_CACHE_S) -> None:
        self._read, self._cache_s = read, cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, DatabaseStats] | None = None

    def _stats(self) -> DatabaseStats:
        with self._lock:  # concurrent scrapes wait for one read instead of each making one
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_s:
                self._cached = (now, self._read())
            return self._cached[1]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("assay_database_stats_up", "Whether the database answered.")
        try:
            stats = self._stats()
        except Exception as exc:
            log.warning("metrics: the database did not answer: %s: %s", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _by_status(
            "assay_datasets", "Datasets by status.", stats.datasets, DatasetStatus
        )
        yield from _by_status("assay_jobs", "Jobs by status.", stats.jobs, JobStatus)
        yield _gauge(
            "assay_queue_depth",
            "Queued jobs (waiting for a worker or for their dataset).",
            stats.jobs.get(JobStatus.queued.value, 0),
        )
        now = datetime.now(UTC)
        yield _gauge(
            "assay_queue_oldest_age_seconds",
            "Age of the oldest queued job (0: none queued).",
            _age(now, stats.oldest_queued_at),
        )
        if stats.stalest_heartbeat_at is not None or stats.stale_running is not None:
            yield _gauge(
                "assay_running_heartbeat_age_max_seconds",
                "Age of the oldest heartbeat of a running job (0: none running).",
                _age(now, stats.stalest_heartbeat_at),
            )
            yield _gauge(
                "assay_running_heartbeat_stale",
                "Running jobs silent longer than the heartbeat timeout (the reaper's next).",
                stats.stale_running or 0,
            )
        if stats.dataset_bytes is not None:
            yield from _by_status(
                "assay_datasets_bytes",
                "Bytes of uploaded datasets by status.",
                stats.dataset_bytes,
                DatasetStatus,
            )
        if stats.artifacts is not None:
            yield _gauge("assay_artifacts", "Files jobs produced.", stats.artifacts)
        if stats.artifact_bytes is not None:
            yield _gauge(
                "assay_artifacts_bytes", "Bytes of the files jobs produced.", stats.artifact_bytes
            )


def _by_status(
    name: str, doc: str, counts: Mapping[str, int], statuses: type[DatasetStatus | JobStatus]
) -> Iterator[GaugeMetricFamily]:
    family = GaugeMetricFamily(name, doc, labels=["status"])
    for status in statuses:
        family.add_metric([status.value], counts.get(status.value, 0))
    yield family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    latency: Histogram
    in_flight: Gauge
    request_bytes: Counter


def http_metrics(registry: CollectorRegistry) -> HttpMetrics:
    """The API's own metrics (in multiprocess mode their samples also go to the shared files)."""
    return HttpMetrics(
        requests=Counter(
            "assay_http_requests",
            "HTTP requests.",
            ["method", "route", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "assay_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=registry,
        ),
        # livesum: the processes running now, added up (a stopped process's count is dropped).
        in_flight=Gauge(
            "assay_http_requests_in_flight",
            "Requests being served (event streams included).",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        request_bytes=Counter(
            "assay_http_request_bytes",
            "Bytes of request bodies received (uploads included).",
            ["method", "route"],
            registry=registry,
        ),
    )


class _Observe:
    """Pure ASGI middleware (streams and uploads pass through untouched)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics
        # Bounded: routes are templates, methods and statuses few.
        self._cache: dict[tuple[str, str, int], _Labelled] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        started, status, received = time.perf_counter(), 500, 0

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_and_count() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive_and_count, send_and_note_status)
        finally:
            metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            labelled = self._labelled(scope["method"], route, status)
            labelled.latency.observe(time.perf_counter() - started)
            labelled.requests.inc()
            if received:
                labelled.request_bytes.inc(received)

    def _labelled(self, method: str, route: str, status: int) -> "_Labelled":
        # Looked up once per (method, route, status): .labels() takes a lock and builds keys.
        key = (method, route, status)
        found = self._cache.get(key)
        if found is None:
            metrics = self.metrics
            found = _Labelled(
                requests=metrics.requests.labels(method, route, str(status)),
                latency=metrics.latency.labels(method, route),
                request_bytes=metrics.request_bytes.labels(method, route),
            )
            self._cache[key] = found
        return found


@dataclass(frozen=True)
class _Labelled:
    requests: Counter
    latency: Histogram
    request_bytes: Counter


def scrape_registry(own: CollectorRegistry, stats: Collector) -> CollectorRegistry:
    """What GET /metrics serves: every process's samples in multiprocess mode, else this one's;
    with the database's figures."""
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        own.register(stats)
        return own
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)
    registry.register(stats)
    return registry


def install_metrics(
    app: FastAPI,
    new_uow: Callable[[], UnitOfWork],
    read_stats: Callable[[], DatabaseStats] | None = None,
) -> None:
    """Serve GET /metrics and time every request by route template (not by raw path).

    `read_stats` reads the database's figures (default: counts by status through the ports).
    """
    registry = CollectorRegistry()
    metrics = http_metrics(registry)
    served = scrape_registry(registry, StatusCollector(read_stats or counts_from_ports(new_uow)))
    app.add_middleware(_Observe, metrics=metrics)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(local_or_authenticated)])
    async def metrics_endpoint() -> Response:
        body = await run_in_threadpool(generate_latest, served)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def forget_this_process() -> None:
    """At a process's exit: drop its live gauges (in-flight) from the shared files."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        mark_process_dead(os.getpid())
