"""A recurring pipeline as a new user sets it up, on PostgreSQL + Redis + S3 (moto).

A schedule imports a CSV from an HTTP server on loopback, runs metrics and normalize, and
exports `normalized.csv` into a table whose CHECK refuses some rows; a webhook receiver on
loopback gets the signed outcomes. `assay beat` ticks the schedules, as in production.
"""

import csv
import hashlib
import hmac
import io
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import (
    Stack,
    assay,
    base_env,
    free_port,
    production_env,
    stop,
    wait_for_worker,
    wait_until_healthy,
)
from tests.fixtures.databases import postgres_database, postgres_dsn
from tests.fixtures.http_servers import Served, body, serve
from tests.services import REDIS_HOST, REDIS_PORT, require_service

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

# The issue asks for "every minute": the interval only sets the pace of the test, the runs, the
# skip of an unchanged file and the export go the same way at any interval.
INTERVAL_S = 15
TABLE = "sensor_readings"
HEADER = "id,quantity,score,city"
# Row 4 is there twice (normalize drops the copy), row 5 has no score (filled with the median),
# and rows 3, 7 and 10 have a negative quantity, which the table's CHECK refuses.
ROWS = [
    "1,5,10.5,oslo",
    "2,0,3.25,lima",
    "3,-2,7.0,pune",
    "4,8,1.5,oslo",
    "4,8,1.5,oslo",
    "5,1,,lima",
    "6,12,22.0,pune",
    "7,-1,4.75,oslo",
    "8,3,9.0,lima",
    "9,6,0.5,pune",
    "10,-9,15.0,oslo",
    "11,2,6.5,lima",
]
CSV = ("\n".join([HEADER, *ROWS]) + "\n").encode()


def expected_normalized() -> list[dict[str, Any]]:
    """normalized.csv computed here: duplicates dropped, score's null filled with the median of
    score, then score scaled to [0, 1] (minmax), in file order."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for record in csv.DictReader(io.StringIO(CSV.decode())):
        key = tuple(record.values())
        if key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "id": int(record["id"]),
                "quantity": int(record["quantity"]),
                "score": float(record["score"]) if record["score"] else None,
                "city": record["city"],
            }
        )
    median = statistics.median(r["score"] for r in rows if r["score"] is not None)
    for row in rows:
        if row["score"] is None:
            row["score"] = median
    low, high = min(r["score"] for r in rows), max(r["score"] for r in rows)
    for row in rows:
        row["score"] = (row["score"] - low) / (high - low)
    return rows


@pytest.fixture(scope="module")
def scheduled_stack(
    tmp_path_factory: pytest.TempPathFactory, moto_s3_endpoint: str
) -> Iterator[Stack]:
    """The production stack (migrate, api, worker) plus `assay beat`, which ticks schedules."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    workdir = tmp_path_factory.mktemp("schedules")
    with postgres_database() as database_url:
        env = base_env(workdir) | production_env(database_url, moto_s3_endpoint)
        # Exports may load into the stack's own database, under the name "warehouse".
        env["ASSAY_DESTINATIONS"] = json.dumps({"warehouse": database_url})
        migrate = subprocess.run(
            [sys.executable, "-m", "main", "migrate"], env=env, cwd=workdir, capture_output=True
        )
        assert migrate.returncode == 0, migrate.stderr.decode()
        port = free_port()
        stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
        stack.env["DSN"] = postgres_dsn(database_url.rsplit("/", 1)[1])
        stack.api_key = stack.create_key("scheduler")
        for name, args in (
            ("api", ["api", "--port", str(port)]),
            # Two: a beat tick never waits behind a running job or export.
            ("worker", ["worker", "--concurrency", "2"]),
            ("beat", ["beat"]),
        ):
            stack.logs.append(workdir / f"{name}.log")
            stack.processes.append(assay(args, env, stack.logs[-1], workdir))
        try:
            wait_until_healthy(stack)
            wait_for_worker(stack)
            yield stack
        finally:
            stop(stack)


def query(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        cursor = db.execute(statement)
        return cursor.fetchall() if cursor.description else []


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def deliveries(receiver: Served) -> list[tuple[dict[str, str], bytes]]:
    """Each POST the receiver got: its headers and its raw body (paired by delivery id)."""
    bodies = {json.loads(raw)["id"]: raw for raw in list(receiver.bodies)}
    return [
        (headers, bodies[delivery])
        for _, headers in list(receiver.requests)
        if (delivery := header(headers, "X-Assay-Delivery")) in bodies
    ]


def wait_for(what: str, check: Any, stack: Stack, timeout: float) -> Any:
    """Poll `check()` until it returns something truthy; fail with the stack's logs."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout} s: {last!r}\n{stack.logs_text()}")


def finished(client: httpx.Client, path: str, stack: Stack) -> dict[str, Any]:
    """The job or export at `path` once it has ended."""

    def ended() -> dict[str, Any] | None:
        got: dict[str, Any] = client.get(path).json()
        return got if got["status"] in ("completed", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(f"the end of {path}", ended, stack, 60)
    return result


def test_schedule_imports_runs_exports_and_notifies(scheduled_stack: Stack) -> None:
    stack = scheduled_stack
    dsn = stack.env["DSN"]
    query(
        dsn,
        f"CREATE TABLE {TABLE} (id bigint NOT NULL, quantity bigint CHECK (quantity >= 0),"
        " score double precision, city text)",
    )
    with (
        serve() as files,
        serve() as receiver,
        stack.client() as client,
    ):
        files.routes["/exports/readings.csv"] = body(CSV)
        receiver.routes["/hooks"] = body(b"ok\n", "text/plain")
        events = ["schedule.run", "job.completed", "job.failed"]
        events += ["export.completed", "export.failed"]
        hook = client.post(
            "/api/v1/webhooks", json={"url": receiver.url("/hooks"), "events": events}
        )
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]

        created = client.post(
            "/api/v1/schedules",
            json={
                "name": "readings",
                "interval_seconds": INTERVAL_S,
                "action": {
                    "source_url": files.url("/exports/readings.csv"),
                    "steps": [
                        {"processor": "metrics"},
                        {
                            "processor": "normalize",
                            "params": {
                                "drop_duplicates": True,
                                "fill_nulls": {"strategy": "median", "columns": ["score"]},
                                "scale": {"method": "minmax", "columns": ["score"]},
                            },
                        },
                    ],
                    "export": {
                        "artifact": "normalized.csv",
                        "destination": "warehouse",
                        "table": TABLE,
                        "mode": "append",
                    },
                },
            },
        )
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert schedule["next_run_at"] is not None

        def runs() -> list[dict[str, Any]]:
            page = client.get(schedule["links"]["runs"])
            assert page.status_code == 200, page.text
            return sorted(page.json()["items"], key=lambda r: r["due_at"])

        def three_settled() -> list[dict[str, Any]] | None:
            got = runs()
            if len(got) < 3 or any(r["outcome"] == "importing" for r in got[:3]):
                return None
            return got if got[0]["export_state"] not in ("waiting", "submitting") else None

        # Three due times: created + 15, 30, 45 s; then the third import settles.
        history = wait_for("three settled runs", three_settled, stack, 4 * INTERVAL_S + 60)
        first, second, third = history[:3]
        assert not any(r["manual"] for r in history)

        # Run 1: a new version, its job completed, its export loaded the table.
        assert first["outcome"] == "submitted", first
        assert first["version"] == 1
        assert first["export_state"] == "submitted", first
        job = finished(client, f"/api/v1/jobs/{first['job_id']}", stack)
        assert job["status"] == "completed", job
        assert job["dataset_id"] == first["dataset_id"]
        export_id = first["export"]["export_id"]
        export = finished(client, f"/api/v1/exports/{export_id}", stack)
        expected = expected_normalized()
        good = [r for r in expected if r["quantity"] >= 0]
        refused = [(n, r) for n, r in enumerate(expected, start=1) if r["quantity"] < 0]
        assert export["status"] == "completed", export
        assert (export["job_id"], export["artifact"]) == (first["job_id"], "normalized.csv")
        assert export["result"]["rows_loaded"] == len(good) == 8
        assert export["result"]["rows_failed"] == len(refused) == 3

        loaded = query(dsn, f"SELECT id, quantity, score, city FROM {TABLE} ORDER BY id")
        assert [(i, q, c) for i, q, _, c in loaded] == [
            (r["id"], r["quantity"], r["city"]) for r in good
        ]
        assert [s for *_, s, _ in loaded] == pytest.approx([r["score"] for r in good], rel=1e-12)

        failed = client.get(export["links"]["failed_rows"])
        assert failed.status_code == 200, failed.text
        items = failed.json()["items"]
        assert [(f["row_number"], f["values"]["id"]) for f in items] == [
            (n, r["id"]) for n, r in refused
        ]
        for item, (_, row) in zip(items, refused, strict=True):
            assert item["values"]["quantity"] == row["quantity"]
            assert "violates check constraint" in item["reason"], item
            assert TABLE in item["reason"] and "assay_stage" not in item["reason"], item

        # Runs 2 and 3: the same file, so no job and no export; the first version stays.
        for run in (second, third):
            assert run["outcome"] == "skipped: unchanged", run
            assert run["job_id"] is None
            assert run["dataset_id"] == first["dataset_id"]
            assert run["export_state"] == "skipped: unchanged"
        due = [datetime.fromisoformat(r["due_at"]) for r in history[:3]]
        # One run per due time, INTERVAL_S apart.
        assert [b - a for a, b in itertools.pairwise(due)] == [timedelta(seconds=INTERVAL_S)] * 2
        assert len(query(dsn, f"SELECT 1 FROM {TABLE}")) == len(good)  # nothing loaded twice
        assert files.requests and all(p == "/exports/readings.csv" for p, _ in files.requests)

        # The receiver: one signed delivery per outcome.
        def announced() -> list[tuple[dict[str, str], bytes]] | None:
            got = deliveries(receiver)
            kinds = [json.loads(raw)["event"] for _, raw in got]
            want = {"schedule.run": 3, "job.completed": 1, "export.completed": 1}
            return got if all(kinds.count(k) >= n for k, n in want.items()) else None

        got = wait_for("the webhook deliveries", announced, stack, 30)
        documents = []
        for headers, raw in got:
            signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
            assert header(headers, "X-Assay-Signature-256") == signature, headers
            assert header(headers, "Content-Type") == "application/json"
            assert abs(int(header(headers, "X-Assay-Timestamp") or 0) - time.time()) < 600
            document = json.loads(raw)
            assert header(headers, "X-Assay-Event") == document["event"]
            documents.append(document)
        by_event: dict[str, list[dict[str, Any]]] = {}
        for document in documents:
            by_event.setdefault(document["event"], []).append(document["data"])
        assert "job.failed" not in by_event and "export.failed" not in by_event
        assert {d["schedule_id"] for d in by_event["schedule.run"]} == {schedule["id"]}
        # A fourth run may have started by now: the first three due times are the ones checked.
        outcomes = {
            datetime.fromisoformat(d["due_at"]): d["outcome"] for d in by_event["schedule.run"]
        }
        assert [outcomes.get(d) for d in due] == ["submitted", *["skipped: unchanged"] * 2]
        assert [d["job_id"] for d in by_event["job.completed"]] == [first["job_id"]]
        [exported] = by_event["export.completed"]
        assert (exported["export_id"], exported["table"]) == (export_id, TABLE)
        assert (exported["rows_loaded"], exported["rows_failed"]) == (len(good), len(refused))

        # The delivery history shows each of them delivered (recorded once the receiver answered).
        received = {document["id"] for document in documents}

        def recorded() -> bool:
            page = client.get(hook.json()["links"]["deliveries"]).json()["items"]
            return received <= {d["id"] for d in page if d["status"] == "delivered"}

        wait_for("delivered in the history", recorded, stack, 15)

        # Paused, so that the stack's teardown leaves no import half done.
        paused = client.patch(schedule["links"]["self"], json={"enabled": False})
        assert paused.status_code == 200 and paused.json()["next_run_at"] is None
