"""A running Assay as a client sees it: real processes, real HTTP.

Two stacks: `embedded` is `assay serve` with nothing configured (SQLite, local files,
filesystem broker); `production` is `assay migrate`, then `assay api` and `assay worker`
as separate processes on PostgreSQL, Redis and S3 (moto's server).
"""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from tests.fixtures.databases import postgres_database
from tests.services import REDIS_HOST, REDIS_PORT, require_service

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    api_key: str | None = None  # None: the stack runs without keys (`serve` on loopback)
    workdir: Path | None = None

    def client(self, api_key: str | None = None) -> httpx.Client:
        """A client sending `api_key` (default: the stack's own key, if it has one)."""
        key = api_key or self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # No keep-alive: a test starved of CPU (moto runs in-process) can idle past uvicorn's
        # keep-alive timeout, and reusing the closed connection fails the request.
        return httpx.Client(
            base_url=self.base_url,
            timeout=30,
            headers=headers,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def headers(self) -> dict[str, str]:
        """The Authorization header of the stack's key (none when it runs without keys)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def create_key(self, owner: str, scope: str = "write") -> str:
        """`assay keys create`, as an operator runs it; the key is its last line of output."""
        return create_key(self.env, self.workdir or Path.cwd(), owner, scope)

    def logs_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs
        )


def assay(
    args: list[str], env: dict[str, str], log: Path, cwd: Path, *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start an `assay` command the way a user would, with its output in a log file.

    `new_session`: in a process group of its own, so os.killpg reaches its children too (a
    worker's pool processes), as systemd or a container runtime would.
    """
    out = open(log, "wb")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(
        [sys.executable, "-m", "main", *args],
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
    )


def create_key(env: dict[str, str], cwd: Path, owner: str, scope: str = "write") -> str:
    created = subprocess.run(
        [sys.executable, "-m", "main", "keys", "create", "--owner", owner, "--scope", scope],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


def wait_until_healthy(stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in stack.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a process exited early:\n{stack.logs_text()}")
        try:
            if httpx.get(f"{stack.base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"stack not ready in {timeout}s:\n{stack.logs_text()}")


def wait_for_worker(stack: Stack, timeout: float = 90) -> None:
    """Validate a tiny dataset: proves a worker consumes the queue (and warms it up)."""
    with stack.client() as client:
        created = client.post("/api/v1/datasets", files={"file": ("warm-up.csv", b"a\n1\n")})
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get(f"/api/v1/datasets/{created.json()['id']}").json()["status"]
            if status == "ready":
                client.delete(f"/api/v1/datasets/{created.json()['id']}")
                return
            time.sleep(0.1)
    raise RuntimeError(f"no worker validated a dataset in {timeout}s:\n{stack.logs_text()}")


def stop(stack: Stack) -> None:
    for process in stack.processes:
        if process.poll() is None:
            process.terminate()
    for process in stack.processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def base_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["ASSAY_DATA_DIR"] = str(workdir / ".assay")
    env["PYTHONPATH"] = str(ROOT)
    # Imports may reach the HTTP servers tests start on 127.0.0.1, and nothing else that is not
    # public: 127.0.0.2 and up stay refused, which the import tests rely on.
    env["ASSAY_IMPORT_ALLOWED_NETWORKS"] = "127.0.0.1/32"
    env["ASSAY_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"  # receivers the tests start
    return env


def production_env(database_url: str, s3_endpoint: str) -> dict[str, str]:
    """Settings for PostgreSQL, the shared Redis (own queue) and S3 (own buckets)."""
    suffix = uuid4().hex[:10]
    return {
        "ASSAY_DATABASE_URL": database_url,
        "ASSAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        "ASSAY_QUEUE_NAME": f"assay-test-{suffix}",
        "ASSAY_STORAGE_BACKEND": "s3",
        "ASSAY_S3_ENDPOINT_URL": s3_endpoint,
        "ASSAY_S3_ACCESS_KEY_ID": "test",
        "ASSAY_S3_SECRET_ACCESS_KEY": "test",
        "ASSAY_S3_DATASETS_BUCKET": f"datasets-{suffix}",
        "ASSAY_S3_RESULTS_BUCKET": f"results-{suffix}",
    }


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`assay serve` in an empty folder."""
    workdir = tmp_path_factory.mktemp("embedded")
    env = base_env(workdir)
    port = free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.logs.append(workdir / "serve.log")
    stack.processes.append(assay(["serve", "--port", str(port)], env, stack.logs[-1], workdir))
    try:
        wait_until_healthy(stack)
        wait_for_worker(stack)
        yield stack
    finally:
        stop(stack)


@pytest.fixture(scope="module")
def production_stack(
    tmp_path_factory: pytest.TempPathFactory, moto_s3_endpoint: str
) -> Iterator[Stack]:
    """PostgreSQL + Redis + S3, with migrate, api and worker as separate processes."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    workdir = tmp_path_factory.mktemp("production")
    database = postgres_database()
    database_url = database.__enter__()
    env = base_env(workdir) | production_env(database_url, moto_s3_endpoint)
    # Exports may load into the stack's own database, under the name "warehouse".
    env["ASSAY_DESTINATIONS"] = json.dumps({"warehouse": database_url})
    migrate = subprocess.run(
        [sys.executable, "-m", "main", "migrate"], env=env, cwd=workdir, capture_output=True
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    port = free_port()
    stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
    stack.api_key = stack.create_key("e2e")
    for name, args in (
        ("api", ["api", "--port", str(port)]),
        ("worker", ["worker", "--concurrency", "1"]),
    ):
        stack.logs.append(workdir / f"{name}.log")
        stack.processes.append(assay(args, env, stack.logs[-1], workdir))
    try:
        wait_until_healthy(stack)
        wait_for_worker(stack)
        yield stack
    finally:
        stop(stack)
        database.__exit__(None, None, None)


@pytest.fixture(
    scope="module",
    params=[
        "embedded",
        pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each deployment shape in turn."""
    stack: Stack = request.getfixturevalue(f"{request.param}_stack")
    return stack
