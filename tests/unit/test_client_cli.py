"""The CLI's exit codes and Ctrl-C, on a scripted HTTP transport (no server)."""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import pytest
from typer.testing import CliRunner

import client.cli
from client.api import AssayClient
from client.cli import EXIT_DETACHED, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED
from main import cli

JOB_ID = str(uuid4())


def job_body(status: str, error: dict | None = None) -> dict:
    now = datetime.now(UTC).isoformat()
    return {
        "id": JOB_ID,
        "dataset_id": str(uuid4()),
        "status": status,
        "progress": 0.5,
        "steps": [{"processor": "metrics", "params": {}}],
        "error": error,
        "created_at": now,
        "updated_at": now,
    }


def sse(*events: tuple[int, str, dict]) -> bytes:
    return b"".join(
        f"id: {i}\nevent: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
        for i, kind, data in events
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """Routes of a scripted server; every request is recorded."""
    routes: dict[tuple[str, str], httpx.Response | Callable[[httpx.Request], httpx.Response]] = {}
    seen: list[tuple[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        answer = routes.get((request.method, request.url.path))
        if answer is None:
            body = {"error": {"code": "not_found", "message": "no such thing", "details": {}}}
            return httpx.Response(404, json=body)
        return answer if isinstance(answer, httpx.Response) else answer(request)

    def scripted(url: str | None = None, api_key: str | None = None) -> AssayClient:
        return AssayClient("http://assay.test", transport=httpx.MockTransport(handle))

    monkeypatch.setattr(client.cli, "AssayClient", scripted)
    return routes, seen


def test_failed_and_cancelled_jobs_have_their_exit_codes(server):
    routes, _ = server
    path = f"/api/v1/jobs/{JOB_ID}"
    error = {"type": "ProcessorInputError", "message": "column 'a' holds -3.0", "step": 0}
    routes[("GET", path)] = httpx.Response(200, json=job_body("failed", error))
    routes[("GET", path + "/stream")] = httpx.Response(
        200, content=sse((1, "created", {}), (2, "failed", {"error": error}))
    )
    result = CliRunner().invoke(cli, ["jobs", "watch", JOB_ID])
    assert result.exit_code == EXIT_JOB_FAILED
    assert "column 'a' holds -3.0 (step 1)" in result.stderr

    routes[("GET", path)] = httpx.Response(200, json=job_body("cancelled"))
    routes[("GET", path + "/stream")] = httpx.Response(200, content=sse((3, "cancelled", {})))
    result = CliRunner().invoke(cli, ["jobs", "watch", JOB_ID, "--json"])
    assert result.exit_code == EXIT_JOB_CANCELLED
    assert json.loads(result.stdout)["job"]["status"] == "cancelled"


def test_ctrl_c_detaches_without_cancelling(server):
    routes, seen = server
    path = f"/api/v1/jobs/{JOB_ID}"
    routes[("GET", path)] = httpx.Response(200, json=job_body("running"))

    def interrupted(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    routes[("GET", path + "/stream")] = interrupted
    result = CliRunner().invoke(cli, ["jobs", "watch", JOB_ID])
    assert result.exit_code == EXIT_DETACHED
    assert f"assay jobs watch {JOB_ID}" in result.stderr
    assert all(method == "GET" for method, _ in seen)  # nothing was cancelled
