"""Latency of small jobs: from POST /api/v1/jobs to the terminal event of the job's SSE stream.

    uv run python -m tests.benchmarks.latency [--jobs N] [--rows R] [--warm-up W]
        [--stack production|embedded] [--json out.json]

Starts Assay as a user does (`production`: `assay migrate`, `assay api`, `assay worker
--concurrency 1` on PostgreSQL and Redis at 127.0.0.1, local storage; `embedded`: `assay
serve`), uploads an R-row CSV (default 1,000) and waits until it is ready, runs W warm-up jobs
that are not counted, then submits N (default 50) `metrics` jobs one after another. Each is
timed from the POST until the client has read the terminal event (`completed`) of
GET /api/v1/jobs/{id}/stream, opened right after the 202. One keep-alive HTTP connection is
used for everything, as a client would.

Prints the median, p90 and max of that time and, from the job events' timestamps (the
server takes them when it writes each event; client and server share the machine's clock),
where it goes, in consecutive spans that add up to the total:

- submit -> job recorded: POST sent -> `created` (HTTP, validation, dataset read, insert);
- recorded -> published: `created` -> `enqueued` (commit, the Celery message to Redis);
- queue -> worker claim: `enqueued` -> `started` (Redis delivery, Celery, the claim);
- set-up: `started` -> first `step_started` (the dataset's Parquet copy fetched to scratch);
- steps: first `step_started` -> last `step_completed` (the processors, storing artifacts);
- finish: last `step_completed` -> `completed` (the result and artifact records);
- completion -> SSE event read: `completed` -> the client has read the event (commit, the
  stream's wake-up or poll, the read, the write to the socket, the client's parsing).

Separately: `POST -> 202`, the response time of the submit as the client sees it.
"""

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx

from tests.benchmarks.jobs_vs_pandas import (
    REDIS,
    dataset_csv,
    in_scratch,
    machine,
    running_stack,
    write_json,
)

TERMINAL = {"completed", "failed", "cancelled"}
SPANS = [
    "submit -> job recorded",
    "recorded -> published",
    "queue -> worker claim",
    "set-up (fetch Parquet copy)",
    "steps",
    "finish (result recorded)",
    "completion -> SSE event read",
]
RESPONSE = "POST -> 202 (response time)"


def upload(client: httpx.Client, csv: Path) -> str:
    """Upload the CSV and wait until the dataset is ready; its id."""
    with open(csv, "rb") as file:
        created = client.post("/api/v1/datasets", files={"file": (csv.name, file, "text/csv")})
    if created.status_code != 201:
        raise RuntimeError(f"upload refused: {created.status_code} {created.text}")
    dataset_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dataset = client.get(f"/api/v1/datasets/{dataset_id}").json()
        if dataset["status"] == "ready":
            return str(dataset_id)
        if dataset["status"] == "failed":
            raise RuntimeError(f"dataset failed: {dataset}")
        time.sleep(0.02)
    raise RuntimeError("the dataset did not become ready in 120 s")


def terminal_event(client: httpx.Client, url: str) -> str:
    """Read the SSE stream until the terminal event is complete (its blank line); its name."""
    name = None
    with client.stream("GET", url, timeout=httpx.Timeout(30, read=120)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif not line and name in TERMINAL:
                return name
    raise RuntimeError(f"{url} ended without a terminal event")


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created_at"]).timestamp()


def run_one(client: httpx.Client, dataset_id: str) -> dict[str, Any]:
    """Submit one metrics job and follow its stream; the timings of its phases in seconds."""
    body = {"dataset_id": dataset_id, "steps": [{"processor": "metrics"}]}
    sent_wall, sent = time.time(), time.perf_counter()
    created = client.post("/api/v1/jobs", json=body)
    accepted = time.perf_counter()
    if created.status_code != 202:
        raise RuntimeError(f"job refused: {created.status_code} {created.text}")
    job = created.json()
    outcome = terminal_event(client, job["links"]["stream"])
    done = time.perf_counter()
    if outcome != "completed":
        raise RuntimeError(f"job {job['id']} ended {outcome}")
    total = done - sent
    received_wall = sent_wall + total
    events = client.get(job["links"]["events"]).json()["items"]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for event in events:
        first.setdefault(event["type"], _at(event))
        last[event["type"]] = _at(event)
    marks = [
        sent_wall,
        first["created"],
        first["enqueued"],
        first["started"],
        first["step_started"],
        last["step_completed"],
        first["completed"],
        received_wall,
    ]
    pairs = itertools.pairwise(marks)
    spans = {span: end - start for span, (start, end) in zip(SPANS, pairs, strict=True)}
    spans[RESPONSE] = accepted - sent
    return {"job_id": job["id"], "total": total, "spans": spans}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total"] for r in runs]
    spans = {
        span: {
            "median_ms": round(statistics.median(r["spans"][span] for r in runs) * 1000, 2),
            "p90_ms": round(percentile([r["spans"][span] for r in runs], 0.9) * 1000, 2),
        }
        for span in [*SPANS, RESPONSE]
    }
    return {
        "jobs": len(runs),
        "median_ms": round(statistics.median(totals) * 1000, 2),
        "p90_ms": round(percentile(totals, 0.9) * 1000, 2),
        "max_ms": round(max(totals) * 1000, 2),
        "min_ms": round(min(totals) * 1000, 2),
        "spans": spans,
    }


def delete_queue(queue: str) -> None:
    """Remove the benchmark's queue (and kombu's bindings for it) from Redis."""
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=0)
    try:
        keys = [queue, *client.scan_iter(match=f"*{queue}*")]
        client.delete(*keys)
    finally:
        client.close()


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    s = report["summary"]
    m = report["machine"]
    console.print(
        f"\n[bold]{s['jobs']} metrics jobs on {report['rows']:,} rows[/bold], stack "
        f"{report['stack']}; {m['cpu_count']} cores; load average "
        f"{report['load_average_at_start']} -> {report['load_average_at_end']}"
    )
    totals = Table(title="POST /jobs -> terminal SSE event")
    for column in ("median ms", "p90 ms", "max ms", "min ms"):
        totals.add_column(column, justify="right")
    totals.add_row(*(f"{s[k]:.1f}" for k in ("median_ms", "p90_ms", "max_ms", "min_ms")))
    console.print(totals)
    spans = Table(title="Where the time goes (from the job events)")
    spans.add_column("span")
    spans.add_column("median ms", justify="right")
    spans.add_column("p90 ms", justify="right")
    for span, figures in s["spans"].items():
        spans.add_row(span, f"{figures['median_ms']:.1f}", f"{figures['p90_ms']:.1f}")
    console.print(spans)


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    csv = dataset_csv(scratch / "data", args.rows)
    workdir = scratch / "assay"
    workdir.mkdir()
    print(f"Assay ({args.stack}): starting")
    with (
        running_stack(args.stack, workdir, 2**30) as running,
        httpx.Client(
            base_url=running.stack.base_url, timeout=30, headers=running.stack.headers()
        ) as client,
    ):
        try:
            dataset_id = upload(client, csv)
            for _ in range(args.warm_up):
                run_one(client, dataset_id)
            print(f"running {args.jobs} jobs")
            runs = [run_one(client, dataset_id) for _ in range(args.jobs)]
        finally:
            if args.stack == "production":
                with contextlib.suppress(Exception):
                    delete_queue(running.stack.env["ASSAY_QUEUE_NAME"])
    return {
        "command": " ".join(["python -m tests.benchmarks.latency", *sys.argv[1:]]),
        "stack": args.stack,
        "rows": args.rows,
        "machine": machine(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "summary": summarize(runs),
        "runs": [
            {
                "job_id": r["job_id"],
                "total_ms": round(r["total"] * 1000, 2),
                "spans_ms": {k: round(v * 1000, 2) for k, v in r["spans"].items()},
            }
            for r in runs
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs measured")
    parser.add_argument("--rows", type=int, default=1_000, help="rows of the dataset")
    parser.add_argument("--warm-up", type=int, default=5, help="jobs run first, not counted")
    parser.add_argument("--stack", choices=["production", "embedded"], default="production")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    report = in_scratch(f"assay-latency-{uuid4().hex[:6]}-", lambda scratch: run(args, scratch))
    print_report(report)
    write_json(args.json, report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
