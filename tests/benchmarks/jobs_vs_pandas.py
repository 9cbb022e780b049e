"""Assay's ingest and job against a plain-pandas service and bare-DuckDB floors, on one CSV.

    uv run python -m tests.benchmarks.jobs_vs_pandas [--rows N] [--json out.json]
        [--stack embedded|production] [--keep-data DIR] [--no-pandas]

1. Generates (or reuses) a deterministic CSV of N rows: f0..f5 float, i0..i1 integer,
   category (10 values), at (timestamp); ~1% nulls per column; a few extreme float outliers.
2. Floors, each a bare DuckDB COPY in its own process: CSV -> Parquet (Assay's ingest does
   this plus validation) and Parquet -> a CSV the size of normalized.csv (Assay's job reads
   the Parquet copy and writes that CSV, plus statistics).
3. Assay through its real API and worker (`embedded`: `assay serve`; `production`: `assay
   migrate`, `assay api` and `assay worker` on PostgreSQL and Redis at 127.0.0.1, local
   storage): ingest = upload until the dataset is ready; job = [metrics, anomalies zscore,
   anomalies iqr, normalize] from POST /jobs until its SSE stream says `completed`. The peak
   RSS of each process of the API and worker trees is the kernel's (VmHWM, reset per phase).
4. The pandas baseline: each step in its own process (pd.read_csv, compute, write).

Prints wall time, rows/s and peak RSS per phase, the ratios the performance targets are set
on, and the job's per-step timeline; --json writes the same. See README.md here.
"""

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tests.e2e.conftest import (
    ROOT,
    Stack,
    assay,
    base_env,
    free_port,
    wait_for_worker,
    wait_until_healthy,
)

# --- the dataset -------------------------------------------------------------------------

SEED = 20260101
GENERATOR_VERSION = 1  # bump when the generated data changes, so cached files are remade
CHUNK_ROWS = 1_000_000
FLOATS = [f"f{i}" for i in range(6)]
CATEGORIES = ["alpha", "bravo", "charlie", "delta", "echo"]
CATEGORIES += ["foxtrot", "golf", "hotel", "india", "juliett"]
NULL_RATIO = 0.01
OUTLIERS_PER_CHUNK = 3  # per float column and million rows
SCHEMA = pa.schema(
    [(name, pa.float64()) for name in FLOATS]
    + [("i0", pa.int64()), ("i1", pa.int64()), ("category", pa.string())]
    + [("at", pa.timestamp("s"))]
)

# --- the job -----------------------------------------------------------------------------

JOB_STEPS: list[dict[str, Any]] = [
    {"processor": "metrics"},
    {"processor": "anomalies", "params": {"method": "zscore", "columns": FLOATS}},
    {"processor": "anomalies", "params": {"method": "iqr", "columns": FLOATS}},
    {
        "processor": "normalize",
        "params": {
            "fill_nulls": {"strategy": "median", "columns": FLOATS},
            "scale": {"method": "minmax", "columns": FLOATS},
            "output_format": "csv",
        },
    },
]
PANDAS_STEPS = ["pandas-metrics", "pandas-zscore", "pandas-iqr", "pandas-normalize"]
TERMINAL = {"completed", "failed", "cancelled"}
POLL_S = 0.05
SAMPLE_S = 0.5
PHASE_TIMEOUT_S = 3 * 3600
MIB = 1024 * 1024
POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)

# The performance targets: (ratio key, comparison, bound, what it means).
TARGETS: list[tuple[str, str, float, str]] = [
    ("speedup_vs_pandas", ">=", 10.0, "pandas total / Assay job"),
    ("job_rss_vs_pandas", "<=", 0.3, "Assay worker peak RSS in the job / pandas peak RSS"),
    ("job_vs_floor", "<=", 1.5, "Assay job / DuckDB Parquet -> CSV floor"),
    ("ingest_vs_floor", "<=", 2.0, "Assay ingest / DuckDB CSV -> Parquet floor"),
]


def _chunk(index: int, start: int, rows: int) -> pa.Table:
    """Rows [start, start + rows): seeded by the chunk index, so any N gives the same prefix."""
    rng = np.random.default_rng([SEED, index])

    def nulls() -> np.ndarray:
        return rng.random(rows) < NULL_RATIO

    arrays: list[pa.Array] = []
    for j in range(len(FLOATS)):
        values = np.round(rng.normal(loc=10.0 * j, scale=1.0 + j, size=rows), 4)
        hits = rng.choice(rows, size=min(OUTLIERS_PER_CHUNK, rows), replace=False)
        signs = rng.choice([-1.0, 1.0], size=len(hits))
        values[hits] = np.round(signs * rng.uniform(1e5, 1e7, size=len(hits)), 4)
        arrays.append(pa.array(values, mask=nulls()))
    arrays.append(pa.array(rng.integers(0, 1_000, size=rows), mask=nulls()))
    arrays.append(pa.array(rng.integers(-(10**9), 10**9, size=rows), mask=nulls()))
    picks = pa.array(rng.integers(0, len(CATEGORIES), size=rows), mask=nulls())
    arrays.append(pc.take(pa.array(CATEGORIES), picks))
    seconds = (start + np.arange(rows)) * 6 + rng.integers(0, 6, size=rows)
    at = np.datetime64("2025-01-01T00:00:00", "s") + seconds.astype("timedelta64[s]")
    arrays.append(pa.array(at, type=pa.timestamp("s"), mask=nulls()))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def dataset_csv(folder: Path, rows: int) -> Path:
    """The generated CSV for `rows`, reused when a complete one is already in `folder`."""
    path = folder / f"assay-bench-{rows}.csv"
    meta_path = path.with_suffix(".json")
    meta = {"rows": rows, "seed": SEED, "version": GENERATOR_VERSION}
    if path.exists() and meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if saved.pop("bytes", None) == path.stat().st_size and saved == meta:
            print(f"reusing {path}")
            return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    started = time.perf_counter()
    options = pacsv.WriteOptions(quoting_style="needed")
    with pacsv.CSVWriter(partial, SCHEMA, write_options=options) as writer:
        for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
            writer.write_table(_chunk(index, start, min(CHUNK_ROWS, rows - start)))
    partial.rename(path)
    meta_path.write_text(json.dumps(meta | {"bytes": path.stat().st_size}))
    took = time.perf_counter() - started
    print(f"generated {path} ({path.stat().st_size / MIB:.0f} MiB) in {took:.1f} s")
    return path


# --- processes and their memory ----------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _memory(processes: list[psutil.Process], with_pss: bool) -> dict[int, tuple[int, int]]:
    """RSS and, `with_pss`, PSS (shared pages split between their sharers; else 0) per pid.

    RSS is a few counters (/proc/PID/statm). PSS walks every page of the process under its
    memory-map lock (/proc/PID/smaps): sampled every 0.5 s it still made normalize ~1 s
    slower, so it is measured only with --pss.
    """
    sizes = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if with_pss:
                info = process.memory_full_info()
                sizes[process.pid] = (info.rss, info.pss)
            else:
                sizes[process.pid] = (process.memory_info().rss, 0)
    return sizes


def _reset_peak(pid: int) -> None:
    """Start the kernel's peak RSS of a process (VmHWM) afresh: Linux's clear_refs 5."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _kernel_peak(pid: int) -> int | None:
    """The process's peak RSS since start or since _reset_peak (VmHWM), if readable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat; else 0)."""
    with contextlib.suppress(OSError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(v) for v in fields]
        idle = ticks[3] + ticks[4]  # idle, iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _describe(pid: int) -> str:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return " ".join(psutil.Process(pid).cmdline()[-3:])
    return "?"


Groups = Callable[[], dict[str, list[psutil.Process]]]


class PeakMemory:
    """Peak RSS and PSS of named process groups during a phase, and their CPU seconds.

    A process's peak RSS is the kernel's own (VmHWM, reset when the phase starts), as
    ru_maxrss is for the floor and pandas processes; a group's is the sum of its processes'
    peaks (at most the true peak of their sum). A thread samples RSS every SAMPLE_S, for
    processes whose VmHWM cannot be read, and PSS only when asked (see _memory).
    `first_rss` is the first sample (idle).
    """

    def __init__(self, groups: Groups, with_pss: bool = False) -> None:
        self._groups, self._with_pss = groups, with_pss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_rss: dict[str, int] = {}
        self.peak_pss: dict[str, int] = {}
        self.first_rss: dict[str, int] = {}
        self.per_process: dict[tuple[str, int], int] = {}
        # CPU seconds (user + system) of each process seen: a figure the load of others on
        # the machine inflates far less than wall time.
        self.cpu_start: dict[tuple[str, int], float] = {}
        self.cpu_last: dict[tuple[str, int], float] = {}

    def sample(self) -> None:
        sizes: dict[str, tuple[int, int]] = {}
        for name, processes in self._groups().items():
            each = _memory(processes, self._with_pss)
            for pid, (rss, _) in each.items():
                key = (name, pid)
                if key not in self.per_process:
                    _reset_peak(pid)
                # The kernel's peak too: a job's child process is gone when the phase ends.
                peak = max(rss, _kernel_peak(pid) or 0)
                self.per_process[key] = max(self.per_process.get(key, 0), peak)
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    # With the CPU of its children once reaped (a job's child process).
                    cpu = times.user + times.system + times.children_user + times.children_system
                    self.cpu_last[(name, process.pid)] = cpu
                    self.cpu_start.setdefault((name, process.pid), cpu)
            sizes[name] = (sum(r for r, _ in each.values()), sum(p for _, p in each.values()))
        sizes["total"] = (sum(r for r, _ in sizes.values()), sum(p for _, p in sizes.values()))
        for name, (rss, pss) in sizes.items():
            self.first_rss.setdefault(name, rss)
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
            self.peak_pss[name] = max(self.peak_pss.get(name, 0), pss)

    def _run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(SAMPLE_S)

    def __enter__(self) -> "PeakMemory":
        self.machine_busy_start = _machine_busy_seconds()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.sample()
        for key in [k for k in self.cpu_last if not psutil.pid_exists(k[1])]:
            # Reaped: its CPU is in its parent's children times.
            del self.cpu_last[key]
        self.machine_busy = _machine_busy_seconds() - self.machine_busy_start
        for key in self.per_process:
            self.per_process[key] = max(self.per_process[key], _kernel_peak(key[1]) or 0)
        for group in {name for name, _ in self.per_process}:
            self.peak_rss[group] = sum(v for k, v in self.per_process.items() if k[0] == group)
        self.peak_rss["total"] = sum(self.per_process.values())

    def cpu_seconds(self, group: str) -> float:
        return sum(
            self.cpu_last[key] - self.cpu_start[key] for key in self.cpu_last if key[0] == group
        )

    def detail(self) -> dict[str, Any]:
        return {
            "cpu_seconds": {g: round(self.cpu_seconds(g), 3) for g in ("api", "worker")},
            # Every process's and the kernel's (write-back, for one): what the others took.
            "machine_busy_cpu_seconds": round(self.machine_busy, 3),
            "peak_pss_bytes": self.peak_pss,
            "rss_at_start_bytes": self.first_rss,
            "peak_rss_per_process": [
                {"group": group, "pid": pid, "command": _describe(pid), "bytes": size}
                for (group, pid), size in sorted(self.per_process.items())
            ],
        }


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """SIGTERM the roots (they stop their children); SIGKILL every survivor of their trees.

    Survivors are killed after `timeout`, or at once when waiting is interrupted (Ctrl-C).
    """
    tree = [p for process in processes for p in _tree(process.pid)]
    try:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        psutil.wait_procs(tree, timeout=timeout)
    finally:
        for survivor in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                if survivor.is_running():
                    survivor.kill()
        psutil.wait_procs(tree, timeout=5)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


@dataclass
class RunningStack:
    kind: str
    stack: Stack
    api_pid: int
    worker_pid: int | None  # None: the worker is a child of `assay serve` (embedded)
    with_pss: bool = False  # also sample PSS during phases (--pss; it slows the processes)

    def groups(self) -> dict[str, list[psutil.Process]]:
        """The API's and the worker's process trees (the embedded worker is serve's child)."""
        if self.worker_pid is not None:
            roots = [self.worker_pid]
        else:
            roots = [p.pid for p in _tree(self.api_pid)[1:] if _is_worker(p)]
        worker = [p for pid in roots for p in _tree(pid)]
        in_worker = {p.pid for p in worker}
        api = [p for p in _tree(self.api_pid) if p.pid not in in_worker]
        return {"api": api, "worker": worker}


def _is_worker(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return "worker" in process.cmdline()
    return False


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database, dropped afterwards."""
    import psycopg

    dsn = f"host={POSTGRES[0]} port={POSTGRES[1]} user=postgres dbname=postgres"
    name = f"assay_bench_{uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_stack(kind: str, workdir: Path, max_upload: int) -> Iterator[RunningStack]:
    """Start Assay as a user would, wait for /ready and a validated warm-up dataset."""
    env = base_env(workdir) | {
        "ASSAY_MAX_UPLOAD_BYTES": str(max_upload),
        "ASSAY_WORKER_CONCURRENCY": "1",  # one job at a time, one pool process: both stacks
        # The load benchmark submits hundreds of jobs a second from one owner.
        "ASSAY_RATE_LIMIT_WRITES_PER_MINUTE": "0",
    }
    port = free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    with contextlib.ExitStack() as cleanup:
        if kind == "production":
            for name, (host, service_port) in (("PostgreSQL", POSTGRES), ("Redis", REDIS)):
                if not _reachable(host, service_port):
                    raise SystemExit(f"{name} is not reachable at {host}:{service_port}")
            env["ASSAY_DATABASE_URL"] = cleanup.enter_context(postgres_database())
            env["ASSAY_BROKER_URL"] = f"redis://{REDIS[0]}:{REDIS[1]}/0"
            env["ASSAY_QUEUE_NAME"] = f"assay-bench-{uuid4().hex[:10]}"
            migrate = subprocess.run(
                [sys.executable, "-m", "main", "migrate"], env=env, cwd=workdir, capture_output=True
            )
            if migrate.returncode != 0:
                raise RuntimeError(f"assay migrate failed:\n{migrate.stderr.decode()[-4000:]}")
            stack.api_key = stack.create_key("bench")
            commands = [("api", ["api", "--port", str(port)])]
            commands.append(("worker", ["worker", "--concurrency", "1"]))
        else:
            commands = [("serve", ["serve", "--port", str(port)])]
        cleanup.callback(stop_processes, stack.processes)
        for name, args in commands:
            stack.logs.append(workdir / f"{name}.log")
            stack.processes.append(assay(args, env, stack.logs[-1], workdir))
        wait_until_healthy(stack)
        wait_for_worker(stack)
        worker_pid = stack.processes[1].pid if kind == "production" else None
        yield RunningStack(kind, stack, stack.processes[0].pid, worker_pid)


# --- measurements ------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    rows: int
    peak_rss: dict[str, int]  # bytes per process group ("process" for a single process)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 4),
            "rows": self.rows,
            "rows_per_s": round(self.rows_per_s),
            "peak_rss_bytes": self.peak_rss,
            "detail": self.detail,
        }


def multipart_file(path: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    with open(path, "rb") as file:
        while chunk := file.read(MIB):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def measure_ingest(running: RunningStack, client: httpx.Client, csv: Path, rows: int) -> Phase:
    """POST the file (streamed from disk) until the dataset is `ready`."""
    boundary = f"assay-benchmark-{uuid4().hex}"
    with PeakMemory(running.groups, running.with_pss) as memory:
        started = time.perf_counter()
        response = client.post(
            "/api/v1/datasets",
            content=multipart_file(csv, boundary),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=PHASE_TIMEOUT_S,
        )
        uploaded = time.perf_counter() - started
        if response.status_code != 201:
            raise RuntimeError(f"upload refused: {response.status_code} {response.text}")
        dataset_id = response.json()["id"]
        deadline = started + PHASE_TIMEOUT_S
        while True:
            dataset = client.get(f"/api/v1/datasets/{dataset_id}").json()
            if dataset["status"] == "ready":
                break
            if dataset["status"] == "failed" or time.perf_counter() > deadline:
                raise RuntimeError(f"dataset did not become ready: {dataset}")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    types = {c["name"]: c["type"] for c in dataset["columns"]}
    if dataset["row_count"] != rows or dataset["failed_row_count"]:
        failed = dataset["failed_row_count"]
        print(f"warning: ingest gave {dataset['row_count']} rows and {failed} failed rows")
    return Phase(
        "assay ingest (upload -> ready)",
        seconds,
        rows,
        memory.peak_rss,
        {
            "dataset_id": dataset_id,
            "upload_seconds": round(uploaded, 4),
            "validate_seconds": round(seconds - uploaded, 4),
            "row_count": dataset["row_count"],
            "failed_row_count": dataset["failed_row_count"],
            "column_types": types,
            **memory.detail(),
        },
    )


def _terminal_event(client: httpx.Client, job_id: str) -> str:
    """Follow the job's SSE stream until its terminal event; return that event's name."""
    timeout = httpx.Timeout(30, read=PHASE_TIMEOUT_S)
    with client.stream("GET", f"/api/v1/jobs/{job_id}/stream", timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event:") and (name := line[6:].strip()) in TERMINAL:
                return name
    raise RuntimeError(f"the stream of job {job_id} ended without a terminal event")


def measure_job(
    running: RunningStack, client: httpx.Client, dataset_id: str, rows: int
) -> tuple[Phase, list[dict[str, Any]]]:
    """POST /jobs until the SSE stream sends `completed`; then the timeline from its events."""
    with PeakMemory(running.groups, running.with_pss) as memory:
        started = time.perf_counter()
        submitted_at = time.time()
        created = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, "steps": JOB_STEPS})
        if created.status_code != 202:
            raise RuntimeError(f"job refused: {created.status_code} {created.text}")
        job_id = created.json()["id"]
        terminal = _terminal_event(client, job_id)
        seconds = time.perf_counter() - started
        notified_at = time.time()
    if terminal != "completed":
        raise RuntimeError(f"job {terminal}: {client.get(f'/api/v1/jobs/{job_id}').json()}")
    events = client.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    summaries = [step["summary"] for step in result["steps"]]
    artifacts = {a["name"]: a["size_bytes"] for a in result["artifacts"]}
    detail = {
        "job_id": job_id,
        # Every event (progress ones at most once a second) at seconds after the submit.
        "events": [
            {"at_s": round(_event_time(e) - submitted_at, 3), "type": e["type"]}
            | {k: e["payload"][k] for k in ("step", "progress", "message") if k in e["payload"]}
            for e in events
        ],
        "zscore_flagged": summaries[1].get("total"),
        "iqr_flagged": summaries[2].get("total"),
        "artifact_bytes": artifacts,
        **memory.detail(),
    }
    timeline = job_timeline(events, submitted_at, notified_at)
    phase = Phase("assay job (submit -> SSE completed)", seconds, rows, memory.peak_rss, detail)
    return phase, timeline


def job_timeline(
    events: list[dict[str, Any]], submitted_at: float, notified_at: float
) -> list[dict[str, Any]]:
    """Seconds spent between the job's events: queueing, set-up, each step, finishing."""
    at = _event_time
    marks: list[tuple[str, float]] = [("submit (client clock)", submitted_at)]
    for event in events:
        kind, payload = event["type"], event["payload"]
        if kind == "started":
            marks.append(("queued -> worker claimed it", at(event)))
        elif kind == "step_started":
            label = "download Parquet copy, set up" if payload.get("step") == 0 else "between steps"
            marks.append((label, at(event)))
        elif kind == "step_completed":
            marks.append((f"step {payload['step']} {_step_label(payload['step'])}", at(event)))
        elif kind == "completed":
            marks.append(("record result (after last step)", at(event)))
    marks.append(("SSE delivered `completed`", notified_at))
    return [
        {"span": label, "seconds": round(end - start, 4)}
        for (_, start), (label, end) in itertools.pairwise(marks)
        if label != "between steps" or end - start >= 0.0005
    ]


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created_at"]).timestamp()


def _step_label(index: int) -> str:
    step = JOB_STEPS[index]
    method = step.get("params", {}).get("method")
    return f"{step['processor']} {method}" if method else step["processor"]


def run_baseline_step(step: str, source: Path, output: Path, rows: int, name: str) -> Phase:
    """One baseline step in its own Python process (see baseline_steps.py)."""
    command = [sys.executable, "-m", "tests.benchmarks.baseline_steps", step, str(source)]
    process = subprocess.Popen(
        [*command, str(output)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        started, busy_started = time.perf_counter(), _machine_busy_seconds()
        out, err = process.communicate(timeout=PHASE_TIMEOUT_S)
        process_seconds = time.perf_counter() - started
        machine_busy = _machine_busy_seconds() - busy_started
    finally:
        if process.poll() is None:
            stop_processes([process], timeout=5)
    if process.returncode != 0:
        raise RuntimeError(f"{step} failed ({process.returncode}):\n{err.decode()[-4000:]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    detail = dict(report["detail"])
    detail["process_seconds"] = round(process_seconds, 4)  # with start-up and imports
    detail["cpu_seconds"] = {"process": round(report["cpu_seconds"], 3)}
    detail["machine_busy_cpu_seconds"] = round(machine_busy, 3)  # with start-up and imports
    if report["read_seconds"]:
        detail["read_csv_seconds"] = round(report["read_seconds"], 4)
    return Phase(name, report["seconds"], rows, {"process": report["peak_rss"]}, detail)


# --- the report --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": importlib.metadata.version("duckdb"),
        "pandas": importlib.metadata.version("pandas"),
        "pyarrow": importlib.metadata.version("pyarrow"),
    }


def ratios(phases: dict[str, Phase]) -> dict[str, dict[str, Any]]:
    job, ingest = phases["job"], phases["ingest"]
    values = {
        "job_vs_floor": job.seconds / phases["floor-job"].seconds,
        "ingest_vs_floor": ingest.seconds / phases["floor-ingest"].seconds,
    }
    with_pandas = all(step in phases for step in PANDAS_STEPS)
    if with_pandas:
        pandas_seconds = sum(phases[s].seconds for s in PANDAS_STEPS)
        pandas_rss = max(phases[s].peak_rss["process"] for s in PANDAS_STEPS)
        values["speedup_vs_pandas"] = pandas_seconds / job.seconds
        values["job_rss_vs_pandas"] = job.peak_rss["worker"] / pandas_rss
    out: dict[str, dict[str, Any]] = {}
    for key, comparison, bound, meaning in TARGETS:
        if key not in values:
            continue
        value = values[key]
        met = value >= bound if comparison == ">=" else value <= bound
        # How far off: the factor by which the figure must improve to meet the target.
        off_by = 1.0 if met else (bound / value if comparison == ">=" else value / bound)
        out[key] = {
            "value": round(value, 3),
            "target": f"{comparison} {bound:g}",
            "met": met,
            "improvement_needed": round(off_by, 2),
            "meaning": meaning,
        }
    for key, phase in (("job", job), ("ingest", ingest)):
        floor = phases[f"floor-{key}"].detail["cpu_seconds"]["process"]
        spent = sum(phase.detail["cpu_seconds"].values())
        out[f"{key}_cpu_vs_floor_cpu"] = {
            "value": round(spent / floor, 3),
            "meaning": f"CPU seconds of Assay's API and worker in the {key} / of its floor"
            " (informative; less sensitive to other load than wall time)",
        }
    for key in ("job", "ingest"):
        rounds = phases[key].detail.get("round_seconds")
        floors = phases[f"floor-{key}"].detail.get("round_seconds")
        if rounds and floors:
            paired = sorted(a / f for a, f in zip(rounds, floors, strict=True))
            out[f"{key}_vs_floor_per_round"] = {
                "value": round(paired[(len(paired) - 1) // 2], 3),
                "rounds": [round(r, 3) for r in paired],
                "meaning": f"median over the rounds of Assay {key} / the floor run just"
                " before it (informative)",
            }
    if not with_pandas:
        return out
    out["job_rss_api_and_worker_vs_pandas"] = {
        "value": round(job.peak_rss["total"] / pandas_rss, 3),
        "meaning": "Assay API + worker peak RSS in the job / pandas peak RSS (informative)",
    }
    if job.detail["peak_pss_bytes"].get("worker"):  # sampled with --pss only
        out["job_pss_vs_pandas"] = {
            "value": round(job.detail["peak_pss_bytes"]["worker"] / pandas_rss, 3),
            "meaning": "Assay worker peak PSS (shared pages counted once) / pandas peak RSS"
            " (informative)",
        }
    out["pandas_total_seconds"] = {"value": round(pandas_seconds, 3)}
    out["pandas_peak_rss_bytes"] = {"value": pandas_rss}
    return out


def _cpu(phase: Phase) -> str:
    cpu = phase.detail.get("cpu_seconds", {})
    return (
        f"{cpu['process']:.2f}" if "process" in cpu else f"{sum(cpu.values()):.2f}" if cpu else "-"
    )


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / MIB:,.0f}"


def print_report(report: dict[str, Any], phases: list[Phase]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    m = report["machine"]
    console.print(
        f"\n[bold]{report['rows']:,} rows[/bold], CSV {report['csv_bytes'] / MIB:,.0f} MiB; "
        f"stack {report['stack']}; {m['cpu_count']} cores ({m['cpu_model']}), "
        f"{m['memory_bytes'] / 2**30:.1f} GiB; Python {m['python']}, DuckDB {m['duckdb']}, "
        f"pandas {m['pandas']}; load average at start {m['load_average_at_start']}"
    )
    table = Table(title="Phases (peak RSS: process trees, children included)")
    headers = ("phase", "wall s", "CPU s", "rows/s", "peak RSS MiB", "API", "worker", "worker PSS")
    for column in headers:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        rss = phase.peak_rss
        table.add_row(
            phase.name,
            f"{phase.seconds:.2f}",
            _cpu(phase),
            f"{phase.rows_per_s:,.0f}",
            _mib(rss.get("process", rss.get("total"))),
            _mib(rss.get("api")),
            _mib(rss.get("worker")),
            _mib(phase.detail.get("peak_pss_bytes", {}).get("worker") or None),
        )
    console.print(table)
    targets = Table(title="Ratios against the performance targets")
    for column in ("ratio", "value", "target", "met", "meaning"):
        targets.add_column(column)
    for key, ratio in report["ratios"].items():
        if "meaning" in ratio:
            met = ratio.get("met")
            mark = "" if met is None else ("yes" if met else f"no (x{ratio['improvement_needed']})")
            targets.add_row(
                key, f"{ratio['value']:.3f}", ratio.get("target", ""), mark, ratio["meaning"]
            )
    console.print(targets)
    timeline = Table(title="Assay job timeline (from its events)")
    timeline.add_column("span")
    timeline.add_column("seconds", justify="right")
    for span in report["job_timeline"]:
        timeline.add_row(span["span"], f"{span['seconds']:.3f}")
    console.print(timeline)
    for line in report["checks"]:
        console.print(line)


ROUND_PHASES = ("floor-ingest", "ingest", "floor-job", "job")
FLOOR_INGEST = "floor: DuckDB CSV -> Parquet"
FLOOR_JOB = "floor: DuckDB Parquet -> CSV"


def median_phase(runs: list[Phase]) -> Phase:
    """The run of median wall time, with the highest peak memory of all runs and every time."""
    chosen = sorted(runs, key=lambda phase: phase.seconds)[(len(runs) - 1) // 2]
    if len(runs) == 1:
        return chosen
    peak = {key: max(run.peak_rss.get(key, 0) for run in runs) for key in chosen.peak_rss}
    detail = chosen.detail | {"round_seconds": [round(run.seconds, 4) for run in runs]}
    return Phase(chosen.name, chosen.seconds, chosen.rows, peak, detail)


def run(args: argparse.Namespace, data_dir: Path, scratch: Path) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    csv = dataset_csv(data_dir, args.rows)
    rows, csv_bytes = args.rows, csv.stat().st_size
    phases: dict[str, Phase] = {}

    print(f"Assay ({args.stack}): starting")
    workdir = scratch / "assay"
    workdir.mkdir()
    rounds: dict[str, list[Phase]] = {key: [] for key in ROUND_PHASES}
    timelines: list[list[dict[str, Any]]] = []
    parquet, floor_csv = scratch / "floor.parquet", scratch / "floor.csv"
    with (
        running_stack(args.stack, workdir, max(5 * 2**30, 2 * csv_bytes)) as running,
        running.stack.client() as client,
    ):
        running.with_pss = args.pss
        # Each round runs a floor right before the Assay phase it is compared with, so a
        # change in the machine's speed during the run weighs on both alike.
        for n in range(1, args.repeat + 1):
            tag = f" (round {n} of {args.repeat})" if args.repeat > 1 else ""
            print(f"{FLOOR_INGEST}{tag}")
            rounds["floor-ingest"].append(
                run_baseline_step("duckdb-csv-to-parquet", csv, parquet, rows, FLOOR_INGEST)
            )
            print(f"Assay: ingest{tag}")
            rounds["ingest"].append(measure_ingest(running, client, csv, rows))
            print(f"{FLOOR_JOB}{tag}")
            rounds["floor-job"].append(
                run_baseline_step("duckdb-parquet-to-csv", parquet, floor_csv, rows, FLOOR_JOB)
            )
            floor_csv.unlink()
            print(f"Assay: job{tag}")
            dataset_id = rounds["ingest"][-1].detail["dataset_id"]
            job, job_timeline_ = measure_job(running, client, dataset_id, rows)
            rounds["job"].append(job)
            timelines.append(job_timeline_)
            if n < args.repeat:
                client.delete(f"/api/v1/datasets/{dataset_id}")  # one round's files on disk
    for key, runs in rounds.items():
        phases[key] = median_phase(runs)
    seconds = [phase.seconds for phase in rounds["job"]]
    timeline = timelines[seconds.index(phases["job"].seconds)]

    for step in [] if args.no_pandas else PANDAS_STEPS:
        print(f"pandas: {step}")
        output = scratch / f"{step}.out"
        phases[step] = run_baseline_step(step, csv, output, rows, f"pandas: {step[7:]}")
        phases[step].detail["output_bytes"] = output.stat().st_size
        output.unlink()
    job_detail = phases["job"].detail
    order = ["floor-ingest", "ingest", "floor-job", "job"]
    checks = [f"zscore flagged values: Assay {job_detail['zscore_flagged']}"]
    checks.append(f"iqr flagged values: Assay {job_detail['iqr_flagged']}")
    normalized_bytes = job_detail["artifact_bytes"].get("normalized.csv")
    checks.append(f"normalized CSV bytes: Assay {normalized_bytes}")
    checks.append(f"floor CSV bytes: {phases['floor-job'].detail['bytes']}")
    shown = [phases[key] for key in order]
    if not args.no_pandas:
        order += PANDAS_STEPS
        shown += [phases[s] for s in PANDAS_STEPS]
        shown.append(
            Phase(
                "pandas: total (4 processes, one after another)",
                sum(phases[s].seconds for s in PANDAS_STEPS),
                rows,
                {"process": max(phases[s].peak_rss["process"] for s in PANDAS_STEPS)},
            )
        )
        checks[0] += f", pandas {phases['pandas-zscore'].detail['total']}"
        checks[1] += f", pandas {phases['pandas-iqr'].detail['total']}"
        checks[2] += f", pandas {phases['pandas-normalize'].detail['output_bytes']}"
    report = {
        "command": " ".join(["python -m tests.benchmarks.jobs_vs_pandas", *sys.argv[1:]]),
        "rows": rows,
        "csv_bytes": csv_bytes,
        "stack": args.stack,
        "machine": machine() | {"load_average_at_start": load_at_start},
        "phases": {key: phases[key].as_json() for key in order},
        "ratios": ratios(phases),
        "job_timeline": timeline,
        "checks": checks,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print_report(report, shown)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--stack", choices=["embedded", "production"], default="embedded")
    parser.add_argument(
        "--keep-data", type=Path, help="folder for the generated CSV, reused by later runs"
    )
    parser.add_argument(
        "--no-pandas",
        action="store_true",
        help="skip the pandas baseline (it needs ~0.5 GiB per million rows); floors still run",
    )
    parser.add_argument(
        "--pss",
        action="store_true",
        help="also sample the worker's PSS every 0.5 s (walks its pages: slows it down)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of floor and Assay phases, alternated; the median of each is reported",
    )
    args = parser.parse_args()
    report = in_scratch(
        "assay-bench-", lambda scratch: run(args, args.keep_data or scratch / "data", scratch)
    )
    write_json(args.json, report)


def in_scratch(prefix: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run a benchmark in a temporary folder; SIGTERM unwinds like Ctrl-C, so every process
    it started is stopped by the finally blocks."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        return work(Path(folder))


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """--json: write the figures."""
    if path:
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
