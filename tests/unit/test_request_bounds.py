"""Bounded requests: JSON bodies, form fields and part headers; errors quote little input."""

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from api.body_limit import declared_length
from api.upload import MAX_FIELD_BYTES, MAX_FORM_OVERHEAD_BYTES
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext
from use_cases.datasets import validate_dataset

MiB = 1024 * 1024
CSV = b"a,b\n1,2\n3,4\n"


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error: dict = response.json()["error"]
    assert error["code"] == code
    return error


def job_body(dataset_id: str, padding: int = 0) -> dict:
    return {"dataset_id": dataset_id, "steps": [{"processor": "metrics"}], "name": "x" * padding}


def multipart(boundary: str, fields: dict[str, bytes], filename: str = "d.csv") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in fields.items()
    ]
    file_part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    return b"".join(parts) + file_part + CSV + f"\r\n--{boundary}--\r\n".encode()


def pieces(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body sent chunked: an iterator has no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_json_body_over_the_limit_with_its_length_is_413_naming_the_limit(client: TestClient):
    dataset = client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)}).json()
    body = json.dumps(job_body(dataset["id"], padding=2 * MiB)).encode()

    response = client.post(
        "/api/v1/jobs", content=body, headers={"content-type": "application/json"}
    )

    error = error_of(response, 413, "payload_too_large")
    assert error["details"]["max_json_body_bytes"] == MiB
    assert error["details"]["request_bytes"] == len(body)
    assert str(MiB) in error["message"]
    assert len(response.content) < 1000


def test_a_chunked_json_body_over_the_limit_is_413_before_it_is_read_whole(
    fake_context: FakeContext, api_key: str
):
    chunk, chunks = 64 * 1024, 200  # 12.5 MiB offered, the limit is 1 MiB
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        yield b'{"dataset_id": "00000000-0000-0000-0000-000000000000", "name": "'
        for _ in range(chunks):
            consumed += 1
            yield b"x" * chunk
        yield b'", "steps": [{"processor": "metrics"}]}'

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(fake_context, PollingJobWakeups()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(
                "/api/v1/jobs",
                content=body(),
                headers={"Authorization": f"Bearer {api_key}", "content-type": "application/json"},
            )

    response = asyncio.run(send())

    assert "content-length" not in response.request.headers
    error = error_of(response, 413, "payload_too_large")
    assert error["details"]["max_json_body_bytes"] == MiB
    assert MiB < error["details"]["received_bytes"] <= MiB + 2 * chunk
    assert consumed <= MiB // chunk + 2, f"{consumed} of {chunks} chunks read"


def test_a_normal_job_submit_and_dataset_import_still_pass(client: TestClient):
    dataset = client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)}).json()
    response = client.post("/api/v1/jobs", json=job_body(dataset["id"], padding=100))
    assert response.status_code == 202, response.text
    # Just under the limit, sent chunked: counted and let through.
    body = json.dumps({"url": "ftp://example.com/d.csv", "name": "n" * (MiB - 100)}).encode()
    assert len(body) <= MiB
    refused = client.post(
        "/api/v1/datasets/import",
        content=pieces(body),
        headers={"content-type": "application/json"},
    )
    assert refused.status_code == 422, refused.text  # the URL's scheme, not the body's size
    assert len(refused.content) < 2000


def test_the_limit_is_a_setting(fake_context: FakeContext, api_key: str):
    small = replace(
        fake_context,
        settings=fake_context.settings.model_copy(update={"max_json_body_bytes": 100}),
    )
    with TestClient(create_app(small, PollingJobWakeups())) as client:
        client.headers["Authorization"] = f"Bearer {api_key}"
        dataset = client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)}).json()
        assert dataset["status"] == "uploaded"  # the upload is exempt: it has its own limit
        response = client.post("/api/v1/jobs", json=job_body(dataset["id"], padding=200))
        assert error_of(response, 413, "payload_too_large")["details"]["max_json_body_bytes"] == 100


def test_a_1_mb_format_field_sent_chunked_is_413_naming_the_field(client: TestClient):
    boundary = "big-field"
    value = b"csv" + b"z" * MiB
    response = client.post(
        "/api/v1/datasets",
        content=pieces(multipart(boundary, {"format": value})),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )

    error = error_of(response, 413, "payload_too_large")
    assert error["details"] == {"field": "format", "max_field_bytes": MAX_FIELD_BYTES}
    assert "`format`" in error["message"] and str(MAX_FIELD_BYTES) in error["message"]
    assert len(response.content) < 500 and b"zzzz" not in response.content


def test_a_field_over_its_cap_is_not_taken_for_the_quota(fake_context: FakeContext, api_key: str):
    quota = replace(
        fake_context,
        settings=fake_context.settings.model_copy(update={"owner_quota_bytes": MiB}),
    )
    boundary = "quota-field"
    with TestClient(create_app(quota, PollingJobWakeups())) as client:
        client.headers["Authorization"] = f"Bearer {api_key}"
        response = client.post(
            "/api/v1/datasets",
            content=pieces(multipart(boundary, {"name": b"n" * (MAX_FIELD_BYTES + 1)})),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert error_of(response, 413, "payload_too_large")["details"]["field"] == "name"


def test_a_huge_file_name_is_413_not_held_in_memory(client: TestClient):
    boundary = "long-name"
    body = multipart(boundary, {}, filename="f" * (4 * MiB) + ".csv")
    response = client.post(
        "/api/v1/datasets",
        content=pieces(body),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    error = error_of(response, 413, "payload_too_large")
    assert error["details"] == {"max_form_overhead_bytes": MAX_FORM_OVERHEAD_BYTES}
    assert len(response.content) < 500


def test_errors_quote_a_short_prefix_of_what_was_sent(client: TestClient):
    value = "q" * (MAX_FIELD_BYTES - 10)  # under the field's cap, still far too long to echo
    response = client.post(
        "/api/v1/datasets", files={"file": ("d.csv", CSV)}, data={"format": value}
    )
    error = error_of(response, 415, "unsupported_format")
    assert error["details"]["value"] == "q" * 64 + "…"
    assert "q" * 65 not in error["message"] and "q" * 64 + "…" in error["message"]

    filename = "n" * 3000 + ".xlsx"
    response = client.post("/api/v1/datasets", files={"file": (filename, CSV)})
    error = error_of(response, 415, "unsupported_format")
    assert len(error["details"]["filename"]) == 65 and len(error["message"]) < 300
    assert ".xlsx" in error["message"]


def test_any_error_quotes_a_bounded_amount_of_a_long_value(client: TestClient):
    dataset = client.post("/api/v1/datasets", files={"file": ("d.csv", CSV)}).json()
    long = "k" * 100_000
    for step in ({"processor": long}, {"processor": "normalize", "params": {long: 1}}):
        response = client.post("/api/v1/jobs", json={"dataset_id": dataset["id"], "steps": [step]})
        error = error_of(response, 422, "invalid_params")
        assert len(response.content) < 3000, step.keys()
        assert error["details"]["field"].startswith("steps[0].")


def test_content_length_is_read_safely():
    assert declared_length("1024") == 1024
    assert declared_length(None) is None and declared_length("") is None
    assert declared_length("²") is None and declared_length("-1") is None
    assert declared_length("9" * 5000) == 10**20  # no int() of thousands of digits


def test_a_gzipped_csv_named_csv_gz_becomes_a_ready_dataset(
    client: TestClient, fake_context: FakeContext, tmp_path: Path
):
    rows = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * 2) for i in range(1000))

    response = client.post("/api/v1/datasets", files={"file": ("data.csv.gz", gzip.compress(rows))})

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["format"], dataset["name"]) == ("csv", "data.csv.gz")
    status = validate_dataset(
        fake_context.new_uow(), fake_context.datasets_storage, UUID(dataset["id"]), tmp_path / "w"
    )
    assert status is not None and status.value == "ready"
    ready = client.get(f"/api/v1/datasets/{dataset['id']}").json()
    assert (ready["status"], ready["row_count"]) == ("ready", 1000)
    json_gz = client.post(
        "/api/v1/datasets", files={"file": ("rows.JSON.GZ", gzip.compress(b'[{"a": 1}]'))}
    )
    assert json_gz.json()["format"] == "json", json_gz.text
    assert client.post("/api/v1/datasets", files={"file": ("x.gz", b"1")}).status_code == 415
