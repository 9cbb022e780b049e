"""The README walkthrough on each deployment shape: upload, wait, inspect, download, delete;
and an import from a URL, from HTTP servers this test runs on loopback (the stacks allow
127.0.0.1/32 and nothing else that is private)."""

import hashlib
import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import Stack
from tests.fixtures.http_servers import body, redirect, serve

RAGGED_CSV = (
    b"city,temperature,reading_at\n"
    b"Oslo,3.5,2026-01-01T00:00:00\n"
    b"Lima,19.25,2026-01-01T01:00:00\n"
    b"Cairo,22.0\n"  # line 4: too few fields
    b"Pune,28.5,2026-01-01T03:00:00\n"
    b"Quito,14.0,2026-01-01T04:00:00,extra\n"  # line 6: too many fields
    b"Perth,,2026-01-01T05:00:00\n"
    b"Nuuk\n"  # line 8: too few fields
    b"Hanoi,30.1,2026-01-01T07:00:00\n"
)


def wait_for(client, dataset_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict = client.get(f"/api/v1/datasets/{dataset_id}").json()
        if body["status"] in ("ready", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"dataset {dataset_id} still {body['status']} after {timeout}s")


def upload(client, content: bytes, filename: str) -> dict:
    response = client.post("/api/v1/datasets", files={"file": (filename, content)})
    assert response.status_code == 201, response.text
    body: dict = response.json()
    return body


def test_walkthrough(stack: Stack):
    with stack.client() as client:
        created = upload(client, RAGGED_CSV, "weather.csv")
        assert created["status"] == "uploaded"
        started = time.monotonic()
        dataset = wait_for(client, created["id"])
        took = time.monotonic() - started
        assert dataset["status"] == "ready", dataset
        assert took < 10, f"validation took {took:.1f}s"
        assert dataset["row_count"] == 5
        assert dataset["failed_row_count"] == 3
        assert [(c["name"], c["type"]) for c in dataset["columns"]] == [
            ("city", "string"),
            ("temperature", "float"),
            ("reading_at", "timestamp"),
        ]
        assert {c["name"]: c["null_count"] for c in dataset["columns"]}["temperature"] == 1
        assert dataset["sha256"] == hashlib.sha256(RAGGED_CSV).hexdigest()

        failed = client.get(f"/api/v1/datasets/{created['id']}/failed-rows").json()
        assert failed["total"] == 3
        assert [(r["line_number"], r["raw_text"]) for r in failed["items"]] == [
            (4, "Cairo,22.0"),
            (6, "Quito,14.0,2026-01-01T04:00:00,extra"),
            (8, "Nuuk"),
        ]
        assert all(r["reason"] for r in failed["items"])

        preview = client.get(
            f"/api/v1/datasets/{created['id']}/preview", params={"limit": 2}
        ).json()
        assert [row["city"] for row in preview["rows"]] == ["Oslo", "Lima"]
        assert preview["rows"][1]["temperature"] == 19.25

        content = client.get(f"/api/v1/datasets/{created['id']}/content")
        assert content.status_code == 200
        assert content.content == RAGGED_CSV

        listed = client.get("/api/v1/datasets", params={"status": "ready"}).json()
        assert created["id"] in [item["id"] for item in listed["items"]]

        assert client.delete(f"/api/v1/datasets/{created['id']}").status_code == 204
        assert client.get(f"/api/v1/datasets/{created['id']}").status_code == 404
        assert client.get(f"/api/v1/datasets/{created['id']}/content").status_code == 404


def test_parquet_and_ndjson_become_ready(stack: Stack):
    table = pa.table({"x": [1, 2, None], "label": ["a", "b", "c"]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with stack.client() as client:
        parquet = wait_for(client, upload(client, buffer.getvalue(), "t.parquet")["id"])
        ndjson = wait_for(client, upload(client, b'{"x": 1}\n{"x": 2}\n{"x": \n', "e.ndjson")["id"])
    assert parquet["status"] == "ready"
    assert parquet["row_count"] == 3
    assert {c["name"]: c["null_count"] for c in parquet["columns"]} == {"x": 1, "label": 0}
    assert ndjson["status"] == "ready"
    assert (ndjson["row_count"], ndjson["failed_row_count"]) == (2, 1)


@pytest.mark.parametrize(
    ("content", "filename", "says"),
    [
        (b"", "empty.csv", "empty"),
        (b"name,city\ncaf\xe9,Paris\n", "latin1.csv", "UTF-8"),
        (b"PAR1 this is not parquet", "fake.parquet", "Parquet"),
        (b'[{"a": 1}, {"a": 2', "truncated.json", "JSON"),
    ],
)
def test_unusable_files_fail_with_a_reason(stack: Stack, content: bytes, filename: str, says: str):
    with stack.client() as client:
        dataset = wait_for(client, upload(client, content, filename)["id"])
    assert dataset["status"] == "failed"
    assert says.lower() in dataset["error"].lower()


def test_an_import_ends_ready_like_the_upload_of_the_same_file(stack: Stack):
    with serve("127.0.0.1") as origin, stack.client() as client:
        origin.routes["/exports/weather.csv"] = body(RAGGED_CSV)
        url = origin.url("/exports/weather.csv")
        response = client.post("/api/v1/datasets/import", json={"url": url})
        assert response.status_code == 202, response.text
        submitted = response.json()
        assert (submitted["status"], submitted["source_url"]) == ("uploaded", url)

        dataset = wait_for(client, submitted["id"])
        assert dataset["status"] == "ready", dataset
        assert (dataset["row_count"], dataset["failed_row_count"]) == (5, 3)
        assert dataset["size_bytes"] == len(RAGGED_CSV)
        assert dataset["sha256"] == hashlib.sha256(RAGGED_CSV).hexdigest()
        assert (dataset["name"], dataset["format"]) == ("weather.csv", "csv")
        content = client.get(f"/api/v1/datasets/{dataset['id']}/content", follow_redirects=True)
        assert content.content == RAGGED_CSV
        rows = client.get(f"/api/v1/datasets/{dataset['id']}/failed-rows").json()
        assert [row["line_number"] for row in rows["items"]] == [4, 6, 8]
        assert len(origin.requests) == 1


@pytest.mark.postgres
@pytest.mark.redis
def test_refusals_reach_no_internal_server(production_stack: Stack):
    with (
        serve("127.0.0.1") as origin,
        serve("127.0.0.2") as internal,
        production_stack.client() as client,
    ):
        internal.routes["/secret.csv"] = body(RAGGED_CSV)
        origin.routes["/moved.csv"] = redirect(internal.url("/secret.csv"))

        refused = client.post("/api/v1/datasets/import", json={"url": internal.url("/secret.csv")})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"]["field"] == "url"
        assert "127.0.0.2 is a loopback address" in refused.json()["error"]["message"]

        passwd = client.post("/api/v1/datasets/import", json={"url": "file:///etc/passwd"})
        assert passwd.status_code == 422, passwd.text
        assert passwd.json()["error"]["details"]["field"] == "url"

        redirected = client.post("/api/v1/datasets/import", json={"url": origin.url("/moved.csv")})
        assert redirected.status_code == 202, redirected.text
        dataset = wait_for(client, redirected.json()["id"])
        assert dataset["status"] == "failed"
        assert "redirect 1 to" in dataset["error"]
        assert "127.0.0.2 is a loopback address" in dataset["error"]
        assert (internal.connections, internal.requests) == (0, [])
        missing = client.get(f"/api/v1/datasets/{dataset['id']}/content")
        assert missing.status_code == 404, missing.text  # nothing stored
