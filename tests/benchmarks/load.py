"""Throughput and tail latency of POST /api/v1/jobs and GET /api/v1/jobs/{id} under wrk.

    uv run python -m tests.benchmarks.load [--connections 1,8,32] [--duration 10]
        [--endpoints post,get] [--api-workers N] [--with-worker] [--json out.json]

Starts the production stack as a user does (`assay migrate`, `assay api`, `assay worker` on
PostgreSQL and Redis at 127.0.0.1, local storage, a new database and queue name), uploads a
1,000-row CSV and waits until it is ready, submits one job for the GET, then runs wrk (the
Debian package: `apt-get install -y wrk`) for each endpoint and connection count, `duration`
seconds each, with `--latency`. The POST is a Lua script sending a one-step `metrics` job.

By default the worker is stopped once the dataset is ready, so the figures are the API's
(with PostgreSQL and Redis) and not shared with a worker running thousands of jobs on the
same cores; the submitted jobs stay queued, and the queue is deleted from Redis at the end.
`--with-worker` keeps it running.

Prints req/s, latency percentiles, errors (non-2xx responses and socket errors) and the API
processes' CPU time per request per endpoint and connection count; --json writes the same.
The CPU per request is the steadier figure on a machine whose cores other work shares.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psutil

from tests.benchmarks.jobs_vs_pandas import (
    dataset_csv,
    in_scratch,
    machine,
    running_stack,
    stop_processes,
    write_json,
)
from tests.benchmarks.latency import delete_queue, upload

POST_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match is not None, text
    number, unit = match.groups()
    return float(number) * UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """req/s, latency percentiles (ms), requests, errors and non-2xx from `wrk --latency`."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result["requests_per_s"] = float(match.group(1))
    if match := re.search(r"(\d+) requests in ([\d.]+\w+)", output):
        result["requests"] = int(match.group(1))
    for percent in ("50", "75", "90", "99"):
        if match := re.search(rf"^\s+{percent}%\s+([\d.]+\w+)", output, re.M):
            result[f"p{percent}_ms"] = round(_ms(match.group(1)), 3)
    if match := re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output):
        result["mean_ms"] = round(_ms(match.group(1)), 3)
        result["max_ms"] = round(_ms(match.group(3)), 3)
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        result["non_2xx"] = int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        result["socket_errors"] = sum(int(g) for g in match.groups())
    return result


def run_wrk(
    url: str,
    connections: int,
    duration: float,
    script: Path | None,
    threads: int,
    headers: dict[str, str],
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    completed = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed: {completed.stderr or completed.stdout}")
    return parse_wrk(completed.stdout) | {"command": " ".join([*command, url])}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process and its children (uvicorn's worker processes)."""
    user = system = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return user, system
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            user, system = user + times.user, system + times.system
    return user, system


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    m = report["machine"]
    console.print(
        f"\n[bold]wrk, {report['duration_s']:g} s per row[/bold]; API workers "
        f"{report['api_workers']}, worker {'running' if report['with_worker'] else 'stopped'}; "
        f"{m['cpu_count']} cores; load average {report['load_average_at_start']} -> "
        f"{report['load_average_at_end']}"
    )
    table = Table()
    headers = ["endpoint", "conns", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"]
    headers += ["API CPU ms/req", "of it system"]
    for column in headers:
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for row in report["results"]:
        errors = row["non_2xx"] + row["socket_errors"]
        table.add_row(
            row["endpoint"],
            str(row["connections"]),
            f"{row.get('requests_per_s', 0):,.0f}",
            *(f"{row.get(k, float('nan')):.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
            str(errors),
            f"{row['api_cpu_ms_per_request']:.2f}",
            f"{row['api_system_cpu_ms_per_request']:.2f}",
        )
    console.print(table)


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    csv = dataset_csv(scratch / "data", 1_000)
    workdir = scratch / "assay"
    workdir.mkdir()
    if args.api_workers:
        os.environ["WEB_CONCURRENCY"] = str(args.api_workers)  # read by `assay api`
    results = []
    with running_stack("production", workdir, 2**30) as running:
        queue = running.stack.env["ASSAY_QUEUE_NAME"]
        try:
            base = running.stack.base_url
            headers = running.stack.headers()
            with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
                dataset_id = upload(client, csv)
                body = {"dataset_id": dataset_id, "steps": [{"processor": "metrics"}]}
                job = client.post("/api/v1/jobs", json=body).json()
            if not args.with_worker:
                stop_processes(running.stack.processes[1:])
            script = scratch / "post.lua"
            script.write_text(POST_SCRIPT.format(body=json.dumps(body)))
            targets = {
                "post": ("POST /jobs", f"{base}/api/v1/jobs", script),
                "get": ("GET /jobs/{id}", f"{base}/api/v1/jobs/{job['id']}", None),
            }
            for key in args.endpoints:
                name, url, lua = targets[key]
                for connections in args.connections:
                    print(f"{name}: {connections} connection(s), {args.duration:g} s")
                    user, system = cpu_seconds(running.api_pid)
                    figures = run_wrk(url, connections, args.duration, lua, args.threads, headers)
                    user_after, system_after = cpu_seconds(running.api_pid)
                    requests = max(1, figures.get("requests", 0))
                    # CPU per request moves far less than req/s when other work shares the cores.
                    figures["api_cpu_ms_per_request"] = round(
                        1000 * (user_after - user + system_after - system) / requests, 3
                    )
                    figures["api_system_cpu_ms_per_request"] = round(
                        1000 * (system_after - system) / requests, 3
                    )
                    results.append({"endpoint": name, "connections": connections, **figures})
                    time.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                delete_queue(queue)
    return {
        "command": " ".join(["python -m tests.benchmarks.load", *sys.argv[1:]]),
        "duration_s": args.duration,
        "api_workers": args.api_workers or 1,
        "with_worker": args.with_worker,
        "machine": machine(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=_ints, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument(
        "--endpoints",
        type=lambda text: [part for part in text.split(",") if part],
        default=["post", "get"],
        help="comma-separated: post, get",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--api-workers", type=int, default=0, help="API processes (WEB_CONCURRENCY for `assay api`)"
    )
    parser.add_argument("--with-worker", action="store_true", help="keep the worker running")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    report = in_scratch(f"assay-load-{uuid4().hex[:6]}-", lambda scratch: run(args, scratch))
    print_report(report)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
