"""Stopping `assay serve` and `assay worker` as an operator or a service manager does.

Each process starts in its own session, so a test can signal it alone (`kill -TERM <pid>`) or
its whole process group (`kill -TERM -<pgid>`, what systemd and a terminal's Ctrl-C reach).
"""

import contextlib
import os
import signal
import socket
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

from tests.e2e.conftest import base_env, free_port, production_env
from tests.fixtures.databases import postgres_database
from tests.services import REDIS_HOST, REDIS_PORT, require_service

IDLE_STOP_S = 2.0
START_TIMEOUT_S = 90.0
# Rows of the dataset whose job must outlive the SIGTERM: the job takes several seconds.
SLOW_JOB_ROWS = 3_000_000
SLOW_STEPS: list[dict] = [
    {"processor": "metrics"},
    {"processor": "anomalies", "params": {"method": "zscore"}},
    {"processor": "anomalies", "params": {"method": "iqr"}},
    {"processor": "normalize", "params": {"scale": {"method": "minmax"}, "output_format": "csv"}},
]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`assay <args>` in its own session, with its output in `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "main", *args],
        env=env,
        cwd=log.parent,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_line(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"exited early:\n{log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text(errors='replace')}"
        time.sleep(0.02)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def send_sigterm(process: subprocess.Popen[bytes], to: str) -> float:
    """SIGTERM to the process alone or to its process group; returns when it was sent."""
    if to == "group":
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    return time.monotonic()


def left_in_group(pgid: int) -> list[str]:
    """Processes of the group still alive (zombies waiting for a reaper do not count)."""
    listed = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True
    ).stdout.splitlines()
    return [line for line in listed if "Z" not in line.split()[1]]


def finish(process: subprocess.Popen[bytes]) -> None:
    """Never leave a process group behind, whatever a test asserted."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("to", ["pid", "group"])
def test_serve_announces_its_url_once_it_answers_and_stops_within_2s_when_idle(
    workdir: Path, to: str
):
    port = free_port()
    log = workdir / "serve.log"
    serve = start(["serve", "--port", str(port)], base_env(workdir), log)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while url not in log.read_text(errors="replace"):
            assert serve.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.01)
        # The announcement comes after the port accepts: the very next request is answered.
        assert answers(f"{url}/health"), log.read_text(errors="replace")
        wait_for_line(serve, log, " ready.")  # the worker is up too: a stop now is an idle one

        sent = send_sigterm(serve, to)
        code = serve.wait(timeout=30)
        took = time.monotonic() - sent
        print(f"serve, idle, SIGTERM to the {to}: exit {code} after {took:.2f}s")
        assert code == 0, log.read_text(errors="replace")
        assert took < IDLE_STOP_S, log.read_text(errors="replace")
        time.sleep(0.3)
        assert left_in_group(serve.pid) == []
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        finish(serve)


def test_serve_on_a_taken_port_says_so_in_one_line(workdir: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = subprocess.run(
            [sys.executable, "-m", "main", "serve", "--port", str(port)],
            env=base_env(workdir),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = (ran.stdout + ran.stderr).strip()
    assert ran.returncode != 0
    assert output.splitlines() == [
        f"Cannot listen on 127.0.0.1:{port}: port {port} is already in use; stop what uses it "
        "or choose another --port."
    ]
    # Nothing was started or written before the port was known to be free.
    assert not (workdir / ".assay").exists()


@pytest.mark.slow
@pytest.mark.parametrize("to", ["pid", "group"])
def test_idle_worker_stops_within_2s(workdir: Path, to: str):
    log = workdir / "worker.log"
    worker = start(["worker"], base_env(workdir), log)
    try:
        wait_for_line(worker, log, " ready.")
        time.sleep(0.5)
        sent = send_sigterm(worker, to)
        code = worker.wait(timeout=30)
        took = time.monotonic() - sent
        print(f"worker, idle, SIGTERM to the {to}: exit {code} after {took:.2f}s")
        assert code == 0, log.read_text(errors="replace")
        assert took < IDLE_STOP_S, log.read_text(errors="replace")
        time.sleep(0.3)
        assert left_in_group(worker.pid) == []
    finally:
        finish(worker)


# --- a running job outlives a SIGTERM to the worker's process group ---------------------------


@pytest.fixture(scope="module")
def slow_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("slow") / "slow.parquet"
    columns = {f"f{i}": pa.array(rng.normal(100, 15, SLOW_JOB_ROWS)) for i in range(6)}
    columns["n"] = pa.array(rng.integers(0, 10_000, SLOW_JOB_ROWS))
    pq.write_table(pa.table(columns), path, row_group_size=500_000)
    return path


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def engine_env(request: pytest.FixtureRequest, workdir: Path) -> Iterator[dict[str, str]]:
    """Settings for separate API and worker processes: embedded (SQLite, files, filesystem
    broker) or production (PostgreSQL, Redis, S3 on moto)."""
    env = base_env(workdir) | {"ASSAY_AUTH_REQUIRED": "false"}
    if request.param == "embedded":
        yield env
        return
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    s3_endpoint: str = request.getfixturevalue("moto_s3_endpoint")
    with postgres_database() as database_url:
        yield env | production_env(database_url, s3_endpoint)


@pytest.mark.slow
def test_sigterm_to_the_worker_process_group_lets_the_running_job_finish(
    workdir: Path, engine_env: dict[str, str], slow_parquet: Path
):
    subprocess.run(
        [sys.executable, "-m", "main", "migrate"], env=engine_env, cwd=workdir, check=True
    )
    port = free_port()
    api = start(["api", "--port", str(port)], engine_env, workdir / "api.log")
    worker_log = workdir / "worker.log"
    worker = start(["worker", "--concurrency", "1"], engine_env, worker_log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_line(worker, worker_log, " ready.")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(f"{base_url}/ready"):
            assert api.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with httpx.Client(base_url=base_url, timeout=120) as client:
            with open(slow_parquet, "rb") as file:
                created = client.post("/api/v1/datasets", files={"file": ("slow.parquet", file)})
            assert created.status_code == 201, created.text
            dataset_id = created.json()["id"]
            wait_status(client, f"/api/v1/datasets/{dataset_id}", {"ready"}, worker_log)
            submitted = client.post(
                "/api/v1/jobs", json={"dataset_id": dataset_id, "steps": SLOW_STEPS}
            )
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            wait_running(client, job_id)

            sent = send_sigterm(worker, "group")
            at_signal = client.get(f"/api/v1/jobs/{job_id}").json()
            code = worker.wait(timeout=120)
            took = time.monotonic() - sent
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            print(f"worker stopped {took:.2f}s after the group's SIGTERM, job {job['status']}")
            logs = worker_log.read_text(errors="replace")
            assert code == 0, logs
            assert at_signal["status"] == "running", at_signal  # the signal came mid-job
            # The worker waited for the job: it ended before the worker did, in its first attempt.
            assert job["status"] == "completed", (job, logs)
            assert job["attempts"] == 1, job
            events = client.get(f"/api/v1/jobs/{job_id}/events").json()["items"]
            assert [e["type"] for e in events].count("completed") == 1
            result = client.get(f"/api/v1/jobs/{job_id}/result")
            assert result.status_code == 200, result.text
            for artifact in result.json()["artifacts"]:
                download = client.get(f"/api/v1/jobs/{job_id}/artifacts/{artifact['name']}")
                assert download.status_code == 200, download.text
            assert "SIGTERM from pid" in logs  # the pool process was reached, and stayed
            time.sleep(0.3)
            assert left_in_group(worker.pid) == []
    finally:
        finish(worker)
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=10)
        finally:
            finish(api)


def wait_status(client: httpx.Client, path: str, wanted: set[str], log: Path) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        body: dict = client.get(path).json()
        if body["status"] in wanted:
            return body
        assert body["status"] not in ("failed", "cancelled"), body
        assert time.monotonic() < deadline, (body, log.read_text(errors="replace"))
        time.sleep(0.1)


def wait_running(client: httpx.Client, job_id: str) -> None:
    """Until the job's first step has made progress, so the worker is mid-job."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        job: dict = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"] > 0.02:
            return
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
