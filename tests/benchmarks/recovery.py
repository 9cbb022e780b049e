"""How fast a killed worker's job comes back, and how regular heartbeats are while steps compute.

    uv run python -m tests.benchmarks.recovery [--rows N] [--json out.json]

On the production stack (`assay api` + `assay worker` on PostgreSQL and Redis at 127.0.0.1,
local storage, default heartbeat and reaper settings):

1. Heartbeats: runs the benchmark job (metrics, zscore, iqr, normalize) on N rows while
   reading the job's `heartbeat_at` every 20 ms; prints the longest gap between beats. The
   reaper requeues a job silent for ASSAY_HEARTBEAT_TIMEOUT_S: the gap must stay well below.
2. Kill: runs the same job again, SIGKILLs every process of the worker (as the OOM killer or
   a lost machine would) once the job is 30% done, starts a new worker at once (as a
   supervisor would), and prints seconds from the kill to `requeued`, to the new `started`
   and to `completed`, next to the uninterrupted job's time.
"""

import argparse
import itertools
import json
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from tests.benchmarks.jobs_vs_pandas import (
    JOB_STEPS,
    RunningStack,
    dataset_csv,
    measure_ingest,
    running_stack,
    stop_processes,
)
from tests.e2e.conftest import assay


def _dsn(running: RunningStack) -> str:
    return running.stack.env["ASSAY_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")


def _submit(client: httpx.Client, dataset_id: str) -> str:
    created = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, "steps": JOB_STEPS})
    created.raise_for_status()
    job_id: str = created.json()["id"]
    return job_id


def _wait(client: httpx.Client, job_id: str, done: set[str], timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in done:
            return job
        time.sleep(0.02)
    raise RuntimeError(f"job {job_id} not {done} in {timeout}s")


def heartbeat_gaps(running: RunningStack, client: httpx.Client, dataset_id: str) -> dict:
    """Run the job once, sampling its heartbeat; the longest silence between two beats."""
    beats: list[datetime] = []
    stop = threading.Event()
    started = time.perf_counter()
    job_id = _submit(client, dataset_id)

    def sample() -> None:
        with psycopg.connect(_dsn(running), autocommit=True) as connection:
            while not stop.is_set():
                row = connection.execute(
                    "SELECT heartbeat_at FROM jobs WHERE id = %s", (job_id,)
                ).fetchone()
                if row and row[0] and (not beats or row[0] != beats[-1]):
                    beats.append(row[0])
                time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    job = _wait(client, job_id, {"completed", "failed", "cancelled"})
    stop.set()
    sampler.join()
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(beats)]
    return {
        "status": job["status"],
        "job_seconds": round(time.perf_counter() - started, 2),
        "beats": len(beats),
        "max_gap_s": round(max(gaps), 3) if gaps else None,
        "median_gap_s": round(sorted(gaps)[len(gaps) // 2], 3) if gaps else None,
    }


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created_at"]).timestamp()


def kill_and_recover(running: RunningStack, client: httpx.Client, dataset_id: str) -> dict:
    """SIGKILL the worker mid-job, start a new one, time the job's way back."""
    job_id = _submit(client, dataset_id)
    deadline = time.monotonic() + 600
    while client.get(f"/api/v1/jobs/{job_id}").json()["progress"] < 0.3:
        if time.monotonic() > deadline:
            raise RuntimeError("the job never reached 30%")
        time.sleep(0.02)
    worker = psutil.Process(running.worker_pid)
    victims = [worker, *worker.children(recursive=True)]
    for process in victims:
        process.kill()
    killed_at = time.time()
    psutil.wait_procs(victims, timeout=10)
    stack = running.stack
    assert stack.workdir is not None
    stack.logs.append(stack.workdir / "worker-2.log")
    stack.processes.append(
        assay(["worker", "--concurrency", "1"], stack.env, stack.logs[-1], stack.workdir)
    )
    job = _wait(client, job_id, {"completed", "failed", "cancelled"})
    events = client.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]

    def after_kill(kind: str) -> float | None:
        times = [
            datetime.fromisoformat(e["created_at"]).timestamp() for e in events if e["type"] == kind
        ]
        later = [t for t in times if t >= killed_at]
        return round(min(later) - killed_at, 2) if later else None

    return {
        "status": job["status"],
        "attempts": job["attempts"],
        "kill_to_requeued_s": after_kill("requeued"),
        "kill_to_started_again_s": after_kill("started"),
        "kill_to_completed_s": after_kill("completed"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="assay-recovery-") as folder:
        workdir = Path(folder)
        csv = dataset_csv(workdir, args.rows)
        with running_stack("production", workdir, csv.stat().st_size * 2) as running:
            try:
                with running.stack.client() as client:
                    client.timeout = httpx.Timeout(60)
                    ingest = measure_ingest(running, client, csv, args.rows)
                    dataset_id = ingest.detail["dataset_id"]
                    beats = heartbeat_gaps(running, client, dataset_id)
                    print(f"heartbeats during a {beats['job_seconds']} s job: {beats}")
                    kill = kill_and_recover(running, client, dataset_id)
                    print(f"after SIGKILL of the worker at 30%: {kill}")
            finally:
                stop_processes(running.stack.processes)
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "heartbeats": beats, "kill": kill}))


if __name__ == "__main__":
    main()
