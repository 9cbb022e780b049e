"""An export as a user runs it: `assay serve` with a destination, upload, export, the table."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Stack,
    assay,
    base_env,
    free_port,
    stop,
    wait_for_worker,
    wait_until_healthy,
)
from tests.integration.exports_support import destination_database, query

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
PASSWORD = "S3cretPassw0rd"
CSV = b"id,amount,name\n1,10,a\n2,-5,b\n3,7,\n"


@pytest.fixture(scope="module")
def stack_with_destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with destination_database() as target:
        workdir = tmp_path_factory.mktemp("exports")
        env = base_env(workdir) | {"ASSAY_DESTINATIONS": f'{{"warehouse": "{target}"}}'}
        port = free_port()
        stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, workdir=workdir)
        stack.logs.append(workdir / "serve.log")
        stack.processes.append(assay(["serve", "--port", str(port)], env, stack.logs[-1], workdir))
        try:
            wait_until_healthy(stack)
            wait_for_worker(stack)
            stack.env["TARGET"] = target
            yield stack
        finally:
            stop(stack)


def wait(client, url: str, done: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict = client.get(url).json()
        if body["status"] in done:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} still {body['status']} after {timeout} s")


def test_export_a_dataset_into_postgres(stack_with_destination: Stack, tmp_path: Path):
    stack = stack_with_destination
    target = stack.env["TARGET"]
    query(target, "CREATE TABLE sales (id bigint, amount bigint CHECK (amount >= 0), name text)")
    with stack.client() as client:
        uploaded = client.post("/api/v1/datasets", files={"file": ("sales.csv", CSV)}).json()
        dataset = wait(client, f"/api/v1/datasets/{uploaded['id']}", ("ready", "failed"))
        assert dataset["status"] == "ready", dataset
        created = client.post(
            "/api/v1/exports",
            json={
                "source": {"dataset_id": dataset["id"]},
                "destination": "warehouse",
                "table": "sales",
                "mode": "append",
            },
        )
        assert created.status_code == 202, created.text
        export = wait(client, created.json()["links"]["self"], ("completed", "failed"))
        assert export["status"] == "completed", (export["error"], stack.logs_text()[-1500:])
        assert export["result"]["rows_loaded"] == 2 and export["result"]["rows_failed"] == 1
        failed = client.get(export["links"]["failed_rows"]).json()["items"]
        assert [(f["row_number"], f["values"]["amount"]) for f in failed] == [(2, -5)]
        texts = [client.get(export["links"][k]).text for k in ("self", "events", "failed_rows")]
    assert query(target, "SELECT id, name FROM sales ORDER BY id") == [(1, "a"), (3, None)]
    assert all(PASSWORD not in text for text in texts)
    assert PASSWORD not in stack.logs_text()
