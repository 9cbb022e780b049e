"""Metrics and logs of a multi-process deployment, as an operator scrapes and reads them.

PostgreSQL + Redis + local storage, `assay api --workers 2` and `assay worker --metrics-port`:
after 50 jobs every scrape of the API, whichever process answers it, counts 50 submissions,
and the worker's scrape 50 completed jobs; the JSON logs carry the request id into the jobs.
"""

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    Stack,
    assay,
    base_env,
    free_port,
    stop,
    wait_for_worker,
    wait_until_healthy,
)
from tests.fixtures.databases import postgres_database
from tests.services import REDIS_HOST, REDIS_PORT, require_service

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

JOBS = 50
CSV = b"x,y\n" + b"".join(b"%d,%d\n" % (i, i * 3 % 7) for i in range(200))


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """Two API processes and one worker serving its metrics; (stack, worker metrics URL)."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    workdir = tmp_path_factory.mktemp("metrics")
    with postgres_database() as database_url:
        env = base_env(workdir) | {
            "ASSAY_DATABASE_URL": database_url,
            "ASSAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
            "ASSAY_QUEUE_NAME": f"assay-test-{workdir.name}",
            "ASSAY_LOG_FORMAT": "json",
            "ASSAY_RATE_LIMIT_WRITES_PER_MINUTE": "0",
        }
        migrate = subprocess.run(
            [sys.executable, "-m", "main", "migrate"], env=env, cwd=workdir, capture_output=True
        )
        assert migrate.returncode == 0, migrate.stderr.decode()
        port, metrics_port = free_port(), free_port()
        stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
        stack.api_key = stack.create_key("ops")
        for name, args in (
            ("api", ["api", "--port", str(port), "--workers", "2"]),
            ("worker", ["worker", "--concurrency", "2", "--metrics-port", str(metrics_port)]),
        ):
            stack.logs.append(workdir / f"{name}.log")
            stack.processes.append(assay(args, env, stack.logs[-1], workdir))
        try:
            wait_until_healthy(stack)
            wait_for_worker(stack)
            yield stack, f"http://127.0.0.1:{metrics_port}/metrics"
        finally:
            stop(stack)


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, label_text = key.partition("{")
        found = ",".join(sorted(re.findall(r'\w+="[^"]*"', label_text.rstrip("}"))))
        if metric == name and found == wanted:
            return float(value)
    return 0.0


def json_lines(path: Path) -> list[dict]:
    """The log's JSON lines (every line of it must be one)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.strip():
            lines.append(json.loads(line))
    return lines


def test_counts_add_up_across_processes_and_logs_follow_the_request(
    metrics_stack: tuple[Stack, str],
) -> None:
    stack, worker_metrics = metrics_stack
    with stack.client() as client:
        uploaded = client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)})
        assert uploaded.status_code == 201, uploaded.text
        dataset_id = uploaded.json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/datasets/{dataset_id}").json()["status"] != "ready":
            assert time.monotonic() < deadline, stack.logs_text()
            time.sleep(0.1)
        request_ids = {}
        for index in range(JOBS):
            submitted = client.post(
                "/api/v1/jobs",
                json={"dataset_id": dataset_id, "steps": [{"processor": "metrics"}]},
                headers={"X-Request-ID": f"e2e-job-{index}"},
            )
            assert submitted.status_code == 202, submitted.text
            assert submitted.headers["X-Request-ID"] == f"e2e-job-{index}"
            request_ids[submitted.json()["id"]] = f"e2e-job-{index}"
        deadline = time.monotonic() + 120
        while True:
            page = client.get("/api/v1/jobs", params={"status": "completed", "limit": 200})
            if len(page.json()["items"]) == JOBS:
                break
            assert time.monotonic() < deadline, stack.logs_text()
            time.sleep(0.2)

        # Each scrape opens a new connection: either API process may answer.
        for _ in range(8):
            text = client.get("/metrics").text
            posts = sample(
                text, "assay_http_requests_total", method="POST", route="/api/v1/jobs", status="202"
            )
            assert posts == JOBS, text
            assert sample(text, "assay_jobs", status="completed") == JOBS
            assert sample(text, "assay_queue_depth") == 0
            assert sample(text, "assay_database_stats_up") == 1

    # The worker's counts are final once each pool process has recorded its last job.
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(worker_metrics, timeout=10).text
        if sample(text, "assay_jobs_finished_total", status="completed") >= JOBS:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert sample(text, "assay_jobs_finished_total", status="completed") == JOBS
    assert sample(text, "assay_jobs_started_total") == JOBS
    assert sample(text, "assay_job_queue_wait_seconds_count") == JOBS
    assert sample(text, "assay_job_steps_total", processor="metrics", status="completed") == JOBS
    assert sample(text, "assay_job_step_duration_seconds_count", processor="metrics") == JOBS
    assert sample(text, "assay_processed_rows_total", stage="job") == JOBS * 200
    # The warm-up upload and this test's: two validations.
    assert (
        sample(text, "assay_validation_duration_seconds_count", kind="validate", status="ready")
        == 2
    )

    # Both API processes served requests: the counts above were added up, not one process's.
    api_lines = json_lines(stack.logs[0])
    submits = [line for line in api_lines if line.get("path") == "/api/v1/jobs"]
    assert len({line["pid"] for line in submits}) == 2, "one API process served every submit"
    assert all(line["owner"] == "ops" and line["request_id"] for line in submits)
    worker_lines = json_lines(stack.logs[1])
    ended = [line for line in worker_lines if line.get("outcome") == "completed"]
    assert len(ended) == JOBS
    for line in ended:
        assert line["attempt"] == 1 and line["owner"] == "ops"
        assert line["request_id"] == request_ids[line["job_id"]]
