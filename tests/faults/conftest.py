"""A production-shaped Assay (API + worker processes, PostgreSQL, Redis, S3 on moto) on private
servers the test may break: see tests/fixtures/faults.py.

Every test builds its own stack with `fault_stack(...)`: its PostgreSQL and Redis are its own, so
a restart, a freeze or a kill never reaches another test or the shared services. The worker's
database and storage connections can go through a TcpProxy; the API always talks directly.
Settings are the defaults (the issue asks for recovery "with default settings"), except the
URLs, the queue and the buckets.
"""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import (
    Stack,
    assay,
    base_env,
    create_key,
    free_port,
    production_env,
    wait_for_worker,
    wait_until_healthy,
)
from tests.fixtures.faults import (  # noqa: F401 - the fixtures are used by name
    PrivatePostgres,
    PrivateRedis,
    TcpProxy,
    postgres_template_fixture,
    private_redis_fixture,
)

# How long past a failed deadline a test keeps watching, to report when recovery did happen
# (0: fail at the deadline). For measuring the engine, not for CI.
OBSERVE_S = float(os.environ.get("ASSAY_FAULTS_OBSERVE_S", "0"))


def timing(name: str, **values: float | int | str) -> None:
    """One line a reader of `pytest -s` (or the CI log) can grep: FAULT-TIMING test key=value."""
    shown = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    print(f"\nFAULT-TIMING {name} {shown}", flush=True)


@dataclass
class FaultStack(Stack):
    """A Stack whose processes run in their own process groups, on private servers."""

    postgres: PrivatePostgres | None = None
    redis: PrivateRedis | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxies: list[TcpProxy] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["ASSAY_DATA_DIR"])

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """`assay worker` (default concurrency) in a process group of its own."""
        assert self.workdir is not None
        log = self.workdir / f"worker-{len(self.workers) + 1}.log"
        self.logs.append(log)
        process = assay(["worker", *args], self.worker_env, log, self.workdir, new_session=True)
        self.processes.append(process)
        self.workers.append(process)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes]) -> float:
        """SIGKILL the worker's whole process group (main process, pool, job children);
        returns time.monotonic() of the kill."""
        killed_at = time.monotonic()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return killed_at

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env["ASSAY_S3_ENDPOINT_URL"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def full_logs(self) -> str:
        text = self.logs_text()
        if self.postgres is not None:
            text += f"\n--- postgres.log\n{self.postgres.log_tail(2000)}"
        return text


def _stop_all(stack: FaultStack) -> None:
    """SIGTERM each process, then SIGKILL its group: a worker stuck in a query must not
    outlive the test (its pool processes would keep connections and CPU)."""
    for process in stack.processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 2
    for process in stack.processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for process in stack.processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if process.poll() is None:
                process.kill()
        process.wait()


BuildStack = Callable[..., FaultStack]


@dataclass(frozen=True)
class MigratedTemplate:
    data: Path  # a stopped server's data folder, at the head revision
    api_key: str  # a write key of owner `faults` in it


@pytest.fixture(scope="session")
def migrated_template(
    postgres_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MigratedTemplate]:
    """The initdb'd template after `assay migrate` and `assay keys create`, run once for the
    session as an operator would: each stack copies it instead of paying two CLI start-ups
    (~3.5 s of imports each on this machine)."""
    server = PrivatePostgres(postgres_template)
    try:
        server.start()
        workdir = tmp_path_factory.mktemp("faults-template")
        env = base_env(workdir) | {"ASSAY_DATABASE_URL": server.url()}
        migrate = subprocess.run(
            [sys.executable, "-m", "main", "migrate"],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, migrate.stderr
        api_key = create_key(env, workdir, "faults")
        server.stop("fast")
        yield MigratedTemplate(server.data, api_key)
    finally:
        server.close()


@pytest.fixture
def fault_postgres(migrated_template: MigratedTemplate) -> Iterator[PrivatePostgres]:
    """A started PostgreSQL of the test's own, migrated, with the template's key."""
    server = PrivatePostgres(migrated_template.data)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def fault_stack(
    tmp_path: Path,
    moto_s3_endpoint: str,
    fault_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    migrated_template: MigratedTemplate,
) -> Iterator[BuildStack]:
    """Build the test's stack: `fault_stack(worker_database_proxy=False, worker_s3_proxy=False)`.

    With a proxy flag the worker reaches PostgreSQL (or S3) through a TcpProxy, the first (and
    second) entry of `stack.proxies`; the API and the operator commands never do.
    """
    built: list[FaultStack] = []

    def build(*, worker_database_proxy: bool = False, worker_s3_proxy: bool = False) -> FaultStack:
        database_url = fault_postgres.url()
        env = base_env(tmp_path) | production_env(database_url, moto_s3_endpoint)
        env["ASSAY_BROKER_URL"] = private_redis.url
        port = free_port()
        stack = FaultStack(
            base_url=f"http://127.0.0.1:{port}",
            env=env,
            workdir=tmp_path,
            postgres=fault_postgres,
            redis=private_redis,
        )
        built.append(stack)
        stack.worker_env = dict(env)
        if worker_database_proxy:
            proxy = TcpProxy(fault_postgres.host, fault_postgres.port)
            stack.proxies.append(proxy)
            stack.worker_env["ASSAY_DATABASE_URL"] = fault_postgres.url(port=proxy.port)
        if worker_s3_proxy:
            endpoint = urlsplit(moto_s3_endpoint)
            assert endpoint.hostname is not None and endpoint.port is not None
            proxy = TcpProxy(endpoint.hostname, endpoint.port)
            stack.proxies.append(proxy)
            stack.worker_env["ASSAY_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
        stack.api_key = migrated_template.api_key
        stack.logs.append(tmp_path / "api.log")
        stack.processes.append(
            assay(
                ["api", "--port", str(port), "--no-access-log"],
                env,
                stack.logs[-1],
                tmp_path,
                new_session=True,
            )
        )
        stack.start_worker()
        wait_until_healthy(stack)
        wait_for_worker(stack)
        return stack

    try:
        yield build
    finally:
        for stack in built:
            _stop_all(stack)
            for proxy in stack.proxies:
                proxy.close()


# --------------------------------------------------------------------------------------------
# data


MEDIUM_ROWS = 400_000


@pytest.fixture(scope="session")
def medium_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400k rows of 8 float columns (1% nulls): `normalize` to CSV writes ~60 MB, an upload
    of several multipart parts (the S3 adapter goes multipart above 16 MiB)."""
    rng = np.random.default_rng(14)
    columns = {
        f"x{i}": pa.array(rng.normal(100, 15, MEDIUM_ROWS), mask=rng.random(MEDIUM_ROWS) < 0.01)
        for i in range(8)
    }
    path = tmp_path_factory.mktemp("faults-data") / "medium.parquet"
    pq.write_table(pa.table(columns), path)
    return path


SMALL_CSV = b"x,y,label\n" + b"".join(
    f"{i % 17},{(i * 7) % 23 + (500 if i == 40 else 0)},{'ab'[i % 2]}\n".encode() for i in range(60)
)

SMALL_ARTIFACTS = ["anomalies.csv", "anomalies-2.csv", "normalized.csv"]
SMALL_STEPS: list[dict[str, Any]] = [
    {"processor": "metrics"},
    {"processor": "anomalies", "params": {"method": "zscore"}},
    {"processor": "anomalies", "params": {"method": "iqr"}},
    {"processor": "normalize", "params": {"scale": {"method": "minmax"}, "output_format": "csv"}},
]

BIG_ARTIFACTS = ["normalized.csv"]
BIG_ARTIFACT_STEPS: list[dict[str, Any]] = [
    {
        "processor": "normalize",
        "params": {"scale": {"method": "zscore"}, "output_format": "csv"},
    }
]


def upload_dataset(stack: Stack, content: bytes | Path, filename: str, timeout: float = 120) -> str:
    """Upload and wait until the dataset is ready; its id."""
    with stack.client() as client:
        if isinstance(content, Path):
            with open(content, "rb") as file:
                created = client.post(
                    "/api/v1/datasets", files={"file": (filename, file)}, timeout=300
                )
        else:
            created = client.post("/api/v1/datasets", files={"file": (filename, content)})
        assert created.status_code == 201, created.text
        dataset_id: str = created.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = client.get(f"/api/v1/datasets/{dataset_id}").json()
            if body["status"] in ("ready", "failed"):
                break
            time.sleep(0.1)
    assert body["status"] == "ready", body
    return dataset_id


# --------------------------------------------------------------------------------------------
# jobs


def submit(client: httpx.Client, dataset_id: str, steps: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/api/v1/jobs", json={"dataset_id": dataset_id, "steps": steps})


def all_jobs(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every job of the stack's owner by id (one or a few list requests)."""
    jobs: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/jobs", params=params)
        page.raise_for_status()
        body = page.json()
        jobs |= {job["id"]: job for job in body["items"]}
        cursor = body["next_cursor"]
        if not cursor:
            return jobs


FINISHED = ("completed", "failed", "cancelled")


def wait_finished(
    client: httpx.Client, job_ids: list[str], deadline: float, poll_s: float = 0.1
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Poll until every job finished or time.monotonic() passes `deadline`.

    Returns the jobs as last seen and, for each finished one, when the test first saw it so
    (time.monotonic()). The jobs' own `finished_at` is the server's clock.
    """
    seen: dict[str, float] = {}
    jobs: dict[str, dict[str, Any]] = {}
    while True:
        try:
            jobs = all_jobs(client)
        except httpx.HTTPError:
            jobs = jobs or {}
        now = time.monotonic()
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is not None and job["status"] in FINISHED and job_id not in seen:
                seen[job_id] = now
        if len(seen) == len(job_ids) or now > deadline:
            return jobs, seen
        time.sleep(poll_s)


def event_types(client: httpx.Client, job_id: str) -> list[str]:
    response = client.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000})
    response.raise_for_status()
    return [e["type"] for e in response.json()["items"]]


def check_artifacts(client: httpx.Client, job_id: str, expected: list[str]) -> list[str]:
    """Download every artifact the API lists for a completed job (their names must be
    `expected`); problems as strings."""
    result = client.get(f"/api/v1/jobs/{job_id}/result")
    if result.status_code != 200:
        return [f"result: {result.status_code} {result.text[:200]}"]
    artifacts = result.json()["artifacts"]
    problems = []
    if sorted(a["name"] for a in artifacts) != sorted(expected):
        problems.append(f"artifacts {[a['name'] for a in artifacts]}, expected {expected}")
    for artifact in artifacts:
        response = client.get(artifact["url"])
        if response.status_code == 307:  # S3: a presigned URL, fetched without our API key
            response = httpx.get(response.headers["location"], timeout=60)
        if response.status_code != 200:
            problems.append(f"{artifact['name']}: {response.status_code} {response.text[:200]}")
        elif hashlib.sha256(response.content).hexdigest() != artifact["sha256"]:
            problems.append(f"{artifact['name']}: sha256 differs")
    return problems


def leftover_uploads(stack: FaultStack, job_id: str) -> list[str]:
    """Incomplete multipart uploads under the job's prefix in the results bucket."""
    listed = stack.s3().list_multipart_uploads(Bucket=stack.env["ASSAY_S3_RESULTS_BUCKET"])
    return [
        f"{u['Key']} ({u['UploadId'][:12]})"
        for u in listed.get("Uploads", [])
        if u["Key"].startswith(f"jobs/{job_id}/")
    ]


def leftover_scratch(stack: FaultStack, job_id: str) -> list[str]:
    """The job's scratch folders in ASSAY_DATA_DIR/tmp."""
    tmp = stack.data_dir / "tmp"
    if not tmp.is_dir():
        return []
    return sorted(entry.name for entry in tmp.iterdir() if job_id in entry.name)
