"""The Python client and the `assay datasets` / `assay jobs` commands against `assay serve`."""

import contextlib
import csv
import hashlib
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from client import ApiError, AssayClient, AssayConnectionError
from client.cli import EXIT_CLIENT_ERROR, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED
from main import cli
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.slow  # starts `assay serve`

ROWS = 40_000


def write_csv(path: Path, rows: int = ROWS) -> Path:
    """Numbers with a few outliers, a text column, and one ragged line at the end."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "c"])
        for i in range(rows):
            a = -3.0 + (i % 97) * 0.0625 if i % 5000 else 500.0
            writer.writerow([a, (i * 7919) % 1000 / 10, f"k{i % 13}"])
        f.write("1,2\n")  # too few fields: a failed row at line rows + 2
    return path


@pytest.fixture(scope="module")
def assay(embedded_stack: Stack) -> Iterator[AssayClient]:
    with AssayClient(embedded_stack.base_url) as client:
        yield client


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("client") / "measurements.csv")


@pytest.fixture(scope="module")
def ready_id(assay: AssayClient, data_csv: Path) -> str:
    dataset = assay.datasets.wait(assay.datasets.upload(data_csv).id, timeout=60)
    assert dataset.status == "ready", dataset.error
    return str(dataset.id)


def test_dataset_calls(assay: AssayClient, data_csv: Path, tmp_path: Path):
    calls: list[tuple[int, int]] = []
    size = data_csv.stat().st_size
    uploaded = assay.datasets.upload(
        data_csv, name="client upload", on_progress=lambda sent, total: calls.append((sent, total))
    )
    # Progress over the file's bytes, chunk by chunk, ending at its size.
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert len(calls) > 3
    assert all(t == size for _, t in calls)
    assert [s for s, _ in calls] == sorted(s for s, _ in calls)

    dataset = assay.datasets.wait(uploaded.id, timeout=60)
    assert (dataset.status, dataset.name, dataset.row_count) == ("ready", "client upload", ROWS)
    assert dataset.sha256 == hashlib.sha256(data_csv.read_bytes()).hexdigest()
    assert [c.name for c in dataset.columns or []] == ["a", "b", "c"]

    # The list pages on as it is consumed: page_size 1 still yields every dataset.
    other = assay.datasets.upload(data_csv, name="second")
    listed = [d.id for d in assay.datasets.list(page_size=1)]
    assert listed[:2] == [other.id, uploaded.id]
    assert len(listed) == len(set(listed))

    preview = assay.datasets.preview(uploaded.id, limit=3)
    with data_csv.open() as f:
        first = list(csv.DictReader(f))[:3]
    assert [row["c"] for row in preview.rows] == [row["c"] for row in first]
    assert [row["a"] for row in preview.rows] == [float(row["a"]) for row in first]

    failed = list(assay.datasets.failed_rows(uploaded.id))
    assert [(r.line_number, r.raw_text) for r in failed] == [(ROWS + 2, "1,2")]

    saved = assay.datasets.download(uploaded.id, tmp_path)
    assert saved == tmp_path / "client upload"  # the name the server gives the file
    assert saved.read_bytes() == data_csv.read_bytes()
    with pytest.raises(FileExistsError):
        assay.datasets.download(uploaded.id, saved)

    assay.datasets.wait(other.id, timeout=60)
    assay.datasets.delete(other.id)
    with pytest.raises(ApiError) as missing:
        assay.datasets.get(other.id)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.details == {"dataset_id": str(other.id)}


class CuttingProxy:
    """A TCP proxy to the API that drops the first `cuts` event streams after `after_bytes`
    bytes of their response: a dropped connection, mid-event, as a client sees it."""

    def __init__(self, target: str, cuts: int, after_bytes: int) -> None:
        url = httpx.URL(target)
        self.target = (url.host, url.port or 80)
        self.cuts, self.after_bytes, self.done = cuts, after_bytes, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        request = downstream.recv(65536)
        cut = b"/stream " in request.split(b"\r\n", 1)[0] and self.done < self.cuts
        if cut:
            self.done += 1
        upstream.sendall(request)
        threading.Thread(target=self._pipe, args=(downstream, upstream), daemon=True).start()
        sent = 0
        try:
            while chunk := upstream.recv(65536):
                if cut and sent + len(chunk) >= self.after_bytes:
                    downstream.sendall(chunk[: self.after_bytes - sent])
                    break
                downstream.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for sock in (downstream, upstream):
                with_suppressed_close(sock)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def with_suppressed_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_job_stream_resumes_after_dropped_connections(
    assay: AssayClient, embedded_stack: Stack, ready_id: str, tmp_path: Path
):
    job = assay.jobs.submit(
        ready_id,
        [
            {"processor": "metrics"},
            {"processor": "anomalies", "params": {"method": "iqr", "columns": ["a", "b"]}},
        ],
        name="streamed",
    )
    proxy = CuttingProxy(embedded_stack.base_url, cuts=2, after_bytes=700)
    reconnects: list[int] = []
    # Without keep-alive, each reconnect is a new connection the proxy sees.
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    try:
        with AssayClient(proxy.url, transport=transport) as via_proxy:
            events = list(
                via_proxy.jobs.stream(job.id, on_reconnect=lambda n, _: reconnects.append(n))
            )
    finally:
        proxy.close()
    assert proxy.done == 2 and len(reconnects) == 2
    history = list(assay.jobs.events(job.id))
    # Every event once, in order, as the history records them; the last one terminal.
    assert [e.id for e in events] == [e.id for e in history]
    assert [e.type for e in events] == [e.type for e in history]
    assert events[-1].type == "completed"
    assert [e.step for e in events if e.type == "step_completed"] == [0, 1]

    # A stream opened after the end replays from Last-Event-ID only what followed.
    middle = events[len(events) // 2].id
    assert [e.id for e in assay.jobs.stream(job.id, last_event_id=middle)] == [
        e.id for e in events if e.id > middle
    ]

    done = assay.jobs.get(job.id)
    assert (done.status, done.progress) == ("completed", 1.0)
    result = assay.jobs.result(job.id)
    assert [s["processor"] for s in result.steps] == ["metrics", "anomalies"]
    assert result.steps[0]["summary"]["row_count"] == ROWS
    artifact = result.artifacts[0]
    path = assay.jobs.download(job.id, artifact.name, tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
    # The IQR flags of column a, against numpy's quartiles of the same values.
    flagged = list(csv.DictReader(io.StringIO(path.read_text())))
    a = np.array([-3.0 + (i % 97) * 0.0625 if i % 5000 else 500.0 for i in range(ROWS)])
    q1, q3 = np.percentile(a, [25, 75])
    outside = np.flatnonzero((a < q1 - 1.5 * (q3 - q1)) | (a > q3 + 1.5 * (q3 - q1))) + 1
    assert len(outside) == ROWS // 5000
    assert sorted(int(r["row_number"]) for r in flagged if r["column"] == "a") == list(outside)
    assert any(j.id == job.id for j in assay.jobs.list(status="completed"))


def test_api_errors_are_exceptions(assay: AssayClient, ready_id: str):
    with pytest.raises(ApiError) as missing:
        assay.jobs.get("00000000-0000-0000-0000-000000000000")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as refused:
        assay.jobs.submit(ready_id, [{"processor": "anomalies", "params": {"method": "nope"}}])
    assert refused.value.status == 422
    assert refused.value.details["field"] == "steps[0].params.method"
    with (
        AssayClient("http://127.0.0.1:9", timeout=2) as nowhere,
        pytest.raises(AssayConnectionError),
    ):
        nowhere.processors()
    names = {p.name for p in assay.processors()}
    assert {"metrics", "anomalies", "normalize"} <= names


def run_cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*args, "--url", stack.base_url])
    return result.exit_code, result.stdout, result.stderr


def test_cli_upload_submit_and_exit_codes(embedded_stack: Stack, data_csv: Path, tmp_path: Path):
    code, stdout, stderr = run_cli(
        embedded_stack, "datasets", "upload", str(data_csv), "--wait", "--json"
    )
    assert code == 0, stderr
    dataset = json.loads(stdout)
    assert (dataset["status"], dataset["row_count"]) == ("ready", ROWS)

    code, stdout, stderr = run_cli(
        embedded_stack,
        "jobs", "submit", dataset["id"],
        "--step", "metrics",
        "--step", "anomalies method=zscore columns=a,b",
        "--wait", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    body = json.loads(stdout)
    assert body["job"]["status"] == "completed"
    anomalies = body["job"]["steps"][1]  # the server fills in the defaults
    assert anomalies["processor"] == "anomalies"
    assert anomalies["params"] | {"method": "zscore", "columns": ["a", "b"]} == anomalies["params"]
    assert [s["processor"] for s in body["result"]["steps"]] == ["metrics", "anomalies"]

    # The tables for people: the result's steps and artifacts.
    code, stdout, _ = run_cli(embedded_stack, "jobs", "result", body["job"]["id"])
    assert code == 0 and "metrics" in stdout and "anomalies" in stdout
    code, stdout, stderr = run_cli(
        embedded_stack, "jobs", "download", body["job"]["id"], "-o", str(tmp_path), "--json"
    )
    assert code == 0, stderr
    assert [Path(p).name for p in json.loads(stdout)["paths"]] == [
        a["name"] for a in body["result"]["artifacts"]
    ]
    code, stdout, _ = run_cli(embedded_stack, "jobs", "ls", "--json", "--limit", "3")
    assert code == 0 and body["job"]["id"] in [j["id"] for j in json.loads(stdout)]
    code, stdout, _ = run_cli(embedded_stack, "datasets", "ls", "--json")
    assert code == 0 and dataset["id"] in [d["id"] for d in json.loads(stdout)]

    # A job that fails when it runs (NMF refuses negative values): its own code and reason.
    code, stdout, stderr = run_cli(
        embedded_stack,
        "jobs", "submit", dataset["id"], "--step", "nmf columns=a,b n_components=1", "--wait",
    )  # fmt: skip
    assert code == EXIT_JOB_FAILED, stdout + stderr
    assert "failed" in stderr and "a" in stderr

    # Client errors: an unknown id (404), a step the processor does not take.
    code, _, stderr = run_cli(
        embedded_stack, "datasets", "show", "00000000-0000-0000-0000-000000000000"
    )
    assert code == EXIT_CLIENT_ERROR and "not_found" in stderr
    code, _, stderr = run_cli(
        embedded_stack, "jobs", "submit", dataset["id"], "--step", "metrics x=1"
    )
    assert code == EXIT_CLIENT_ERROR and "no parameter 'x'" in stderr
    code, _, stderr = run_cli(embedded_stack, "datasets", "show", "nope", "--json")
    assert code == EXIT_CLIENT_ERROR
    assert json.loads(stderr)["status"] == 422


def test_cli_cancelled_job_exit_code(embedded_stack: Stack, ready_id: str):
    with AssayClient(embedded_stack.base_url) as client:
        # A queued job cancelled before any worker claims it (the worker is busy with the first).
        busy = client.jobs.submit(ready_id, [{"processor": "metrics"}] * 6)
        job = client.jobs.submit(ready_id, [{"processor": "metrics"}])
        if client.jobs.cancel(job.id).status not in ("cancelled", "running"):
            pytest.fail("cancel did not take")
        client.jobs.wait(busy.id, timeout=120)
    code, stdout, stderr = run_cli(embedded_stack, "jobs", "watch", str(job.id))
    assert code == EXIT_JOB_CANCELLED, stdout + stderr


@pytest.mark.postgres
@pytest.mark.redis
def test_client_on_the_production_stack(
    production_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """PostgreSQL, Redis and S3, with the API key taken from the environment."""
    monkeypatch.setenv("ASSAY_URL", production_stack.base_url)
    monkeypatch.setenv("ASSAY_API_KEY", production_stack.api_key or "")
    source = write_csv(tmp_path / "small.csv", rows=2000)
    with AssayClient() as assay:
        dataset = assay.datasets.wait(assay.datasets.upload(source).id, timeout=60)
        assert (dataset.status, dataset.row_count) == ("ready", 2000)
        steps = [{"processor": "anomalies", "params": {"method": "iqr", "columns": ["a"]}}]
        job = assay.jobs.wait(assay.jobs.submit(dataset.id, steps).id, timeout=120)
        assert job.status == "completed", job.error
        [path] = assay.jobs.download_all(job.id, tmp_path / "out")
        flagged = list(csv.DictReader(path.open()))
        assert sorted(int(r["row_number"]) for r in flagged) == [1]  # the 500.0 in row 1
    with AssayClient(api_key="not-a-key") as stranger, pytest.raises(ApiError) as refused:
        stranger.datasets.get(dataset.id)
    assert refused.value.status == 401
