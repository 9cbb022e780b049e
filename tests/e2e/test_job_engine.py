"""The job engine under failure, on PostgreSQL + Redis + S3 as in production.

A worker killed with SIGKILL mid-job, a cancel on a large dataset, and a broker outage.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import Stack, base_env, free_port, production_env, stop, wait_until_healthy
from tests.fixtures.databases import postgres_database
from tests.services import REDIS_HOST, REDIS_PORT, require_service, services_required

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
BIG_ROWS = 5_000_000
FAST_RECOVERY = {
    "ASSAY_HEARTBEAT_TIMEOUT_S": "3",
    "ASSAY_REAPER_INTERVAL_S": "0.5",
    "ASSAY_REAPER_GRACE_S": "2",
}


def start(stack: Stack, name: str, args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = workdir / f"{name}-{len(stack.logs)}.log"
    stack.logs.append(log)
    process = subprocess.Popen(
        [sys.executable, "-m", "main", *args],
        env=stack.env,
        cwd=workdir,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child process owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches the pool children too
    )
    stack.processes.append(process)
    return process


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5M rows, 10 columns (6 float, 2 int, a category, a timestamp), about 1% nulls."""
    rng = np.random.default_rng(42)
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    columns: dict[str, pa.Array] = {}
    for i in range(6):
        values = rng.normal(100, 15, BIG_ROWS)
        columns[f"f{i}"] = pa.array(values, mask=rng.random(BIG_ROWS) < 0.01)
    for i in range(2):
        columns[f"i{i}"] = pa.array(rng.integers(0, 10_000, BIG_ROWS))
    columns["category"] = pa.array(rng.choice(["a", "b", "c", "d"], BIG_ROWS))
    columns["at"] = pa.array(
        np.datetime64("2026-01-01") + rng.integers(0, 10**9, BIG_ROWS).astype("timedelta64[s]")
    )
    pq.write_table(pa.table(columns), path, row_group_size=500_000)
    return path


@pytest.fixture(scope="module")
def engine_stack(
    tmp_path_factory: pytest.TempPathFactory, moto_s3_endpoint: str
) -> Iterator[Stack]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    workdir = tmp_path_factory.mktemp("engine")
    database = postgres_database()
    env = base_env(workdir) | FAST_RECOVERY | production_env(database.__enter__(), moto_s3_endpoint)
    subprocess.run([sys.executable, "-m", "main", "migrate"], env=env, cwd=workdir, check=True)
    port = free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.api_key = stack.create_key("e2e")
    start(stack, "api", ["api", "--port", str(port)], workdir)
    start(stack, "worker", ["worker", "--concurrency", "1"], workdir)
    stack.env["WORKDIR"] = str(workdir)
    try:
        wait_until_healthy(stack)
        yield stack
    finally:
        stop(stack)
        database.__exit__(None, None, None)


@pytest.fixture(scope="module")
def big_dataset(engine_stack: Stack, big_parquet: Path) -> str:
    with engine_stack.client() as client, open(big_parquet, "rb") as file:
        response = client.post(
            "/api/v1/datasets", files={"file": ("big.parquet", file)}, timeout=300
        )
        assert response.status_code == 201, response.text
        dataset_id: str = response.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = client.get(f"/api/v1/datasets/{dataset_id}").json()
            if body["status"] in ("ready", "failed"):
                break
            time.sleep(0.2)
    assert body["status"] == "ready", body
    assert body["row_count"] == BIG_ROWS
    return dataset_id


HEAVY_STEPS: list[dict] = [
    {"processor": "metrics"},
    {"processor": "anomalies", "params": {"method": "zscore"}},
    {"processor": "anomalies", "params": {"method": "iqr"}},
    {
        "processor": "normalize",
        "params": {
            "fill_nulls": {"strategy": "median"},
            "scale": {"method": "minmax"},
            "output_format": "csv",
        },
    },
]


def submit(client: httpx.Client, dataset_id: str, steps: list[dict]) -> dict:
    response = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, "steps": steps})
    assert response.status_code == 202, response.text
    job: dict = response.json()
    return job


def wait_running(client: httpx.Client, job_id: str, min_progress: float = 0.0) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"] > min_progress:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got going: {job}")


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def test_cancel_of_a_running_job_on_5m_rows_ends_within_2s(engine_stack: Stack, big_dataset: str):
    with engine_stack.client() as client:
        job = submit(client, big_dataset, HEAVY_STEPS)
        wait_running(client, job["id"], min_progress=0.05)
        asked = time.monotonic()
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 202
        while (status := client.get(f"/api/v1/jobs/{job['id']}").json()["status"]) == "running":
            assert time.monotonic() - asked < 2.0, "still running 2 s after cancel"
            time.sleep(0.02)
        took = time.monotonic() - asked
        assert status == "cancelled", status
        print(f"cancelled {took:.2f}s after the request")
        assert client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 409
        types = [e["type"] for e in client.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]]
        assert types.count("cancelled") == 1 and "completed" not in types


def test_worker_killed_mid_job_completes_exactly_once(engine_stack: Stack, big_dataset: str):
    workdir = Path(engine_stack.env["WORKDIR"])
    with engine_stack.client() as client:
        job = submit(client, big_dataset, HEAVY_STEPS)
        wait_running(client, job["id"], min_progress=0.1)
        worker = engine_stack.processes[1]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        start(engine_stack, "worker", ["worker", "--concurrency", "1"], workdir)

        done = wait_finished(client, job["id"])
        assert done["status"] == "completed", (done, engine_stack.logs_text())
        assert done["attempts"] == 2
        events = client.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
        types = [e["type"] for e in events]
        assert types.count("completed") == 1
        assert types.count("requeued") == 1
        result = client.get(f"/api/v1/jobs/{job['id']}/result").json()
        assert sorted(a["name"] for a in result["artifacts"]) == [
            "anomalies-2.csv",
            "anomalies.csv",
            "normalized.csv",
        ]
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=engine_stack.env["ASSAY_S3_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    listed = s3.list_objects_v2(
        Bucket=engine_stack.env["ASSAY_S3_RESULTS_BUCKET"], Prefix=f"jobs/{job['id']}/"
    )
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert keys and all("/attempt-2/" in key for key in keys), keys


def test_broker_outage_loses_no_job_and_never_500(tmp_path: Path):
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        message = "the redis-server binary is not installed"
        if services_required():
            pytest.fail(message + " (services are required here)")
        pytest.skip(message)
    port = free_port()

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                redis_server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return process
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    redis = start_redis()
    database = postgres_database()
    env = (
        base_env(tmp_path)
        | FAST_RECOVERY
        | {
            "ASSAY_DATABASE_URL": database.__enter__(),
            "ASSAY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        }
    )
    subprocess.run([sys.executable, "-m", "main", "migrate"], env=env, cwd=tmp_path, check=True)
    api_port = free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{api_port}", env=env, workdir=tmp_path)
    stack.api_key = stack.create_key("e2e")
    start(stack, "api", ["api", "--port", str(api_port)], tmp_path)
    start(stack, "worker", ["worker", "--concurrency", "1"], tmp_path)
    statuses: list[int] = []
    try:
        wait_until_healthy(stack)
        with stack.client() as client:
            created = client.post(
                "/api/v1/datasets", files={"file": ("d.csv", b"x,y\n1,2\n3,4\n5,60\n")}
            )
            statuses.append(created.status_code)
            dataset_id = created.json()["id"]
            deadline = time.monotonic() + 30
            while client.get(f"/api/v1/datasets/{dataset_id}").json()["status"] != "ready":
                assert time.monotonic() < deadline
                time.sleep(0.1)

            redis.terminate()
            redis.wait()
            jobs = []
            for _ in range(3):
                response = client.post(
                    "/api/v1/jobs",
                    json={"dataset_id": dataset_id, "steps": [{"processor": "metrics"}]},
                )
                statuses.append(response.status_code)
                jobs.append(response.json()["id"])
                statuses.append(client.get(f"/api/v1/jobs/{jobs[-1]}").status_code)
            ready = client.get("/ready")
            statuses.append(ready.status_code)
            assert ready.status_code == 503
            assert ready.json()["checks"]["broker"].startswith("unavailable")

            redis = start_redis()
            for job_id in jobs:
                finished = wait_finished(client, job_id, timeout=90)
                statuses.append(200)
                assert finished["status"] == "completed", (finished, stack.logs_text())
                types = [
                    e["type"] for e in client.get(f"/api/v1/jobs/{job_id}/events").json()["items"]
                ]
                assert types.count("completed") == 1
        assert 500 not in statuses, statuses
    finally:
        stop(stack)
        redis.terminate()
        redis.wait()
        database.__exit__(None, None, None)
