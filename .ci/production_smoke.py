"""Smoke test of the production install: `assay serve`, an upload, a job with every processor.

Run with the Python of an environment built like the Dockerfile's (`uv sync --locked --no-dev`),
so that a runtime import missing from `[project.dependencies]` fails here. Standard library only:
that environment has no test packages.

    python .ci/production_smoke.py            # `assay` next to this interpreter
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

# Params for processors whose params model has required fields; the rest run with defaults.
EVENTS = {"timestamp_column": "seen_at", "group_column": "city"}
ITEMS = ["bought_a", "bought_b", "bought_c", "bought_d"]
STEP_PARAMS: dict[str, dict[str, Any]] = {
    "anomalies": {"method": "iqr"},
    "count_anomalies": EVENTS
    | {"h3": {"lat_column": "lat", "lon_column": "lon", "resolution": 5}, "period": "month"},
    "count_model": EVENTS | {"period": "day", "features": ["day_of_week", "trend"]},
    "count_comparison": EVENTS | {"period": "month"},
    "latent_classes": {"columns": ITEMS, "n_classes": 2, "n_init": 2},
    "nmf": {"columns": ["temperature", "humidity", *ITEMS], "n_components": 2},
    "correspondence": {"columns": ["city", "bought_a"]},
    "factor_analysis": {"columns": ["temperature", "humidity", *ITEMS], "n_factors": 1},
}

ROWS = 2000

# Events over three years (timestamps), places, and four 0/1 purchase items.
CSV = b"city,temperature,humidity,seen_at,lat,lon," + ",".join(ITEMS).encode() + b"\n"
CSV += b"".join(
    (
        f"city{i % 7},{10 + (i * 37) % 23 / 2},{(i * 13) % 100},"
        f"{date(2023, 1, 1) + timedelta(days=i * 7 % 1100)}T{i % 24:02d}:00:00Z,"
        f"{48 + (i % 5) / 10},{2 + (i % 3) / 10},"
        + ",".join(str((i * (j + 3)) % (j + 2) % 2) for j in range(len(ITEMS)))
        + "\n"
    ).encode()
    for i in range(ROWS)
)


def main() -> int:
    assay = Path(sys.executable).parent / "assay"
    with tempfile.TemporaryDirectory(prefix="assay-smoke-") as folder:
        port = free_port()
        # Embedded defaults only: no setting of the caller's environment or .env leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
        env["ASSAY_DATA_DIR"] = str(Path(folder) / "data")
        server = subprocess.Popen(
            [str(assay), "serve", "--port", str(port)], cwd=folder, env=env, start_new_session=True
        )
        try:
            run(f"http://127.0.0.1:{port}", server)
        finally:
            server.send_signal(signal.SIGINT)  # Ctrl-C: serve stops its worker, then itself
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    print("production smoke test passed")
    return 0


def run(base: str, server: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: get(f"{base}/live") is not None, server, "the API to answer /live")

    dataset = upload(f"{base}/api/v1/datasets", "smoke.csv", CSV)
    dataset_url = f"{base}/api/v1/datasets/{dataset['id']}"
    wait_until(
        lambda: (get(dataset_url) or {}).get("status") in ("ready", "failed"),
        server,
        "the dataset to be validated",
    )
    dataset = get(dataset_url) or {}
    check(dataset["status"] == "ready", f"dataset not ready: {dataset}")
    check(dataset["row_count"] == ROWS, f"expected {ROWS} rows: {dataset}")

    processors = get(f"{base}/api/v1/processors")
    check(bool(processors), "no processors listed")
    steps = []
    for processor in processors:
        name = processor["name"]
        required = processor.get("params_schema", {}).get("required", [])
        params = STEP_PARAMS.get(name, {})
        check(
            set(required) <= set(params),
            f"processor {name} requires {required}: add its params to STEP_PARAMS",
        )
        steps.append({"processor": name, "params": params})

    job = post_json(f"{base}/api/v1/jobs", {"dataset_id": dataset["id"], "steps": steps})
    job_url = f"{base}/api/v1/jobs/{job['id']}"
    terminal = ("completed", "failed", "cancelled")
    wait_until(lambda: (get(job_url) or {}).get("status") in terminal, server, "the job to end")
    job = get(job_url) or {}
    check(job["status"] == "completed", f"job did not complete: {job}")

    result = get(f"{job_url}/result") or {}
    for artifact in result.get("artifacts", []):
        with urllib.request.urlopen(f"{base}{artifact['url']}") as response:
            content = response.read()
        check(len(content) == artifact["size_bytes"], f"artifact size differs: {artifact}")
        check(hashlib.sha256(content).hexdigest() == artifact["sha256"], f"sha256: {artifact}")
    ran = [step["processor"] for step in steps]
    print(f"job {job['id']} completed: {', '.join(ran)}; {len(result.get('artifacts', []))} files")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Any, server: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        exited = server.poll()
        check(exited is None, f"`assay serve` exited ({exited}) while waiting for {what}")
        if condition():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError):
        return None


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return send(request)


def upload(url: str, filename: str, content: bytes) -> Any:
    boundary = uuid.uuid4().hex
    disposition = f'form-data; name="file"; filename="{filename}"'
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: text/csv\r\n\r\n"
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return send(request)


def send(request: urllib.request.Request) -> Any:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{request.full_url}: {exc.code} {exc.read().decode()}") from exc


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"production smoke test failed: {message}")


if __name__ == "__main__":
    sys.exit(main())
