"""Request ids, JSON logs with their context, and the metrics the API and workers record."""

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from api.logging import RequestLogContext, accepted_request_id
from api.metrics import DatabaseStats, StatusCollector
from main import JsonFormatter
from schemas.domain.ids import new_id
from schemas.domain.records import (
    DEFAULT_OWNER,
    Dataset,
    DatasetFormat,
    DatasetStatus,
    JobEvent,
    JobStep,
    KeyScope,
    Principal,
)
from tests.fakes import FakeContext, FakeQueue, FakeUnitOfWork
from use_cases.jobs import submit_job
from workers import metrics as worker_metrics
from workers.celery_app import JobLogContext

CSV = b"a,b\n1,2\n"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record logged meanwhile, as JSON lines (what ASSAY_LOG_FORMAT=json writes)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestLogContext())
    handler.addFilter(JobLogContext())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- request ids -------------------------------------------------------------------------------


def test_a_request_gets_an_id_in_x_request_id(client: TestClient):
    first, second = client.get("/health"), client.get("/api/v1/jobs")
    ids = {first.headers["X-Request-ID"], second.headers["X-Request-ID"]}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)


def test_a_clients_own_request_id_is_kept_and_a_bad_one_replaced(client: TestClient):
    mine = "client-42:retry.1"
    assert client.get("/health", headers={"X-Request-ID": mine}).headers["X-Request-ID"] == mine
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        answered = client.get("/health", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert answered != bad and len(answered) == 32
    assert accepted_request_id(b"\xff\xfe") is None


def test_errors_carry_the_request_id_too(client: TestClient):
    response = client.get("/api/v1/jobs/not-a-uuid", headers={"X-Request-ID": "abc"})
    assert response.status_code == 422
    assert response.headers["X-Request-ID"] == "abc"
    unauthenticated = client.get("/api/v1/jobs", headers={"Authorization": "", "X-Request-ID": "d"})
    assert unauthenticated.status_code == 401 and unauthenticated.headers["X-Request-ID"] == "d"


def test_the_jobs_created_event_holds_the_request_id(client: TestClient, fake_context: FakeContext):
    uploaded = client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)})
    submitted = client.post(
        "/api/v1/jobs",
        json={"dataset_id": uploaded.json()["id"], "steps": [{"processor": "metrics"}]},
        headers={"X-Request-ID": "submit-1"},
    )
    assert submitted.status_code == 202, submitted.text
    uow = fake_context.new_uow()
    created = [e for e in uow.job_events.rows if e.type == "created"]
    assert [e.payload["request_id"] for e in created] == ["submit-1"]


def test_api_log_lines_are_json_with_request_id_and_owner(
    client: TestClient, fake_context: FakeContext, json_lines: io.StringIO
):
    fake_context.queue.down = True  # the upload's use case logs that it could not publish
    response = client.post(
        "/api/v1/datasets", files={"file": ("d.csv", CSV)}, headers={"X-Request-ID": "up-7"}
    )
    assert response.status_code == 201, response.text
    lines = [line for line in parsed(json_lines) if "not published" in line["message"]]
    assert len(lines) == 1, json_lines.getvalue()
    line = lines[0]
    assert (line["request_id"], line["owner"], line["level"]) == ("up-7", DEFAULT_OWNER, "warning")
    assert {"time", "logger", "pid"} <= set(line)
    outside = logging.getLogger("x")
    outside.info("no request here")
    assert "request_id" not in parsed(json_lines)[-1]


def test_json_lines_keep_extras_and_exceptions(json_lines: io.StringIO):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("failed %s", "here", extra={"dataset_id": "d1"})
    line = parsed(json_lines)[-1]
    assert line["message"] == "failed here" and line["dataset_id"] == "d1"
    assert "ValueError: boom" in line["exc_info"]


# --- the worker's log context and metrics ------------------------------------------------------


def ready_dataset(uow: FakeUnitOfWork) -> Dataset:
    at = datetime.now(UTC)
    dataset = Dataset(
        id=new_id(),
        owner_id="alice",
        name="d.csv",
        format=DatasetFormat.csv,
        status=DatasetStatus.ready,
        size_bytes=100,
        sha256="ab" * 32,
        storage_key="k",
        row_count=9,
        failed_row_count=1,
        created_at=at,
        updated_at=at,
    )
    uow.datasets.add(dataset)
    return dataset


def test_a_workers_job_log_lines_carry_job_attempt_owner_and_request_id(
    json_lines: io.StringIO,
):
    uow = FakeUnitOfWork()
    dataset = ready_dataset(uow)
    alice = Principal(owner_id="alice", scope=KeyScope.write)
    job, _ = submit_job(
        uow,
        FakeQueue(),
        principal=alice,
        dataset_id=dataset.id,
        steps=[JobStep(processor="metrics")],
        request_id="req-9",
    )
    with worker_metrics.traced_job(lambda: uow, job.id):
        logging.getLogger("use_cases.run_job").warning("job %s hit something", job.id)
    line = parsed(json_lines)[-1]
    assert line["job_id"] == str(job.id) and line["attempt"] == 1
    assert (line["owner"], line["request_id"]) == ("alice", "req-9")
    assert line["dataset_id"] == str(dataset.id)
    logging.getLogger("x").info("after the job")
    assert "job_id" not in parsed(json_lines)[-1]


def sample(name: str, **labels: str) -> float:
    return worker_metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_attempt_is_observed_from_its_events(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(worker_metrics.MULTIPROC_DIR_ENV, "/nonexistent")  # as with --metrics-port
    uow = FakeUnitOfWork()
    dataset = ready_dataset(uow)
    alice = Principal(owner_id="alice", scope=KeyScope.write)
    job, _ = submit_job(
        uow,
        FakeQueue(),
        principal=alice,
        dataset_id=dataset.id,
        steps=[JobStep(processor="metrics"), JobStep(processor="metrics")],
    )
    trace = worker_metrics.read_trace(lambda: uow, job.id)
    created = trace.events[0].created_at
    names = [
        ("started", {"attempt": 1}, 0.5),
        ("step_started", {"step": 0, "processor": "metrics"}, 0.6),
        ("step_completed", {"step": 0, "processor": "metrics"}, 0.9),
        ("step_started", {"step": 1, "processor": "metrics"}, 1.0),
        ("failed", {"error": {"processor": "metrics", "type": "ProcessorInputError"}}, 1.2),
    ]
    for kind, payload, at in names:
        uow.job_events.add(
            JobEvent(
                job_id=job.id,
                type=kind,
                payload=payload,
                created_at=created + timedelta(seconds=at),
            )
        )
    before = {
        "started": sample("assay_jobs_started_total"),
        "failed": sample("assay_jobs_finished_total", status="failed"),
        "wait": sample("assay_job_queue_wait_seconds_sum"),
        "step": sample("assay_job_step_duration_seconds_count", processor="metrics"),
        "lost": sample("assay_job_steps_total", processor="metrics", status="failed"),
        "why": sample(
            "assay_job_failures_total", processor="metrics", error_type="ProcessorInputError"
        ),
    }
    worker_metrics.observe_attempt(lambda: uow, trace, "failed", 1.0)
    assert sample("assay_jobs_started_total") == before["started"] + 1
    assert sample("assay_jobs_finished_total", status="failed") == before["failed"] + 1
    assert sample("assay_job_queue_wait_seconds_sum") == pytest.approx(before["wait"] + 0.5)
    assert (
        sample("assay_job_step_duration_seconds_count", processor="metrics") == before["step"] + 1
    )
    assert sample("assay_job_steps_total", processor="metrics", status="failed") == (
        before["lost"] + 1
    )
    assert sample(
        "assay_job_failures_total", processor="metrics", error_type="ProcessorInputError"
    ) == (before["why"] + 1)


def test_without_a_metrics_port_nothing_is_read_after_an_attempt(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv(worker_metrics.MULTIPROC_DIR_ENV, raising=False)
    reads = []
    trace = worker_metrics.JobTrace(UUID(int=1))

    def new_uow():
        reads.append(1)
        return FakeUnitOfWork()

    worker_metrics.observe_attempt(new_uow, trace, "completed", 1.0)
    assert reads == []


# --- figures read from the database ------------------------------------------------------------


def test_database_figures_are_cached_and_a_failed_read_does_not_fail_the_scrape():
    reads: list[int] = []
    oldest = datetime.now(UTC) - timedelta(seconds=90)

    def read() -> DatabaseStats:
        reads.append(1)
        if len(reads) > 1:
            raise ConnectionError("down")
        return DatabaseStats(
            datasets={"ready": 2},
            jobs={"queued": 3, "running": 1},
            oldest_queued_at=oldest,
            stalest_heartbeat_at=oldest,
            stale_running=1,
            artifacts=4,
            artifact_bytes=400,
            dataset_bytes={"ready": 10},
        )

    registry = CollectorRegistry()
    collector = StatusCollector(read, cache_s=60)
    registry.register(collector)
    for _ in range(3):
        assert registry.get_sample_value("assay_queue_depth") == 3
    assert len(reads) == 1
    assert registry.get_sample_value("assay_jobs", {"status": "completed"}) == 0
    assert (registry.get_sample_value("assay_queue_oldest_age_seconds") or 0) >= 90
    assert registry.get_sample_value("assay_running_heartbeat_stale") == 1
    assert registry.get_sample_value("assay_datasets_bytes", {"status": "ready"}) == 10
    assert registry.get_sample_value("assay_artifacts_bytes") == 400
    failing = StatusCollector(read, cache_s=0)
    text = generate_latest(_registry_of(failing)).decode()
    assert "assay_database_stats_up 0.0" in text and "assay_jobs{" not in text


def _registry_of(collector: StatusCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_metrics_count_requests_by_route_in_flight_and_body_bytes(client: TestClient):
    client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)})
    text = client.get("/metrics").text
    assert 'assay_http_requests_total{method="POST",route="/api/v1/datasets",status="201"} 1.0' in (
        text
    )
    assert "assay_http_requests_in_flight 1.0" in text  # the scrape itself
    line = next(
        line for line in text.splitlines() if line.startswith("assay_http_request_bytes_total{")
    )
    assert 'route="/api/v1/datasets"' in line and float(line.split()[-1]) > len(CSV)
    assert 'assay_jobs{status="queued"} 0.0' in text and "assay_queue_depth 0.0" in text
