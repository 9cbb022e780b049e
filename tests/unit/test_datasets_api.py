"""Dataset routes over fakes: uploads, bad input and error bodies."""

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path, PurePath
from urllib.parse import unquote
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from schemas.domain.ids import new_id
from schemas.domain.records import DatasetStatus, Job, JobStatus
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext

CSV = b"a,b\n1,2\n3,4\n"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def upload(client: TestClient, content: bytes = CSV, filename: str = "data.csv", **form: str):
    return client.post("/api/v1/datasets", files={"file": (filename, content)}, data=form)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict = body["error"]
    return error


def test_upload_stores_bytes_and_publishes_validation(
    client: TestClient, fake_context: FakeContext
):
    response = upload(client)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "uploaded"
    assert body["format"] == "csv"
    assert body["name"] == "data.csv"
    assert body["size_bytes"] == len(CSV)
    assert body["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert body["links"]["self"] == f"/api/v1/datasets/{body['id']}"
    assert fake_context.queue.validations == [UUID(body["id"])]
    stored = fake_context.datasets_storage.objects
    assert list(stored.values()) == [CSV]
    assert not list((fake_context.settings.tmp_dir).glob("upload-*")), "spool file left behind"


def test_upload_of_many_batches_arrives_whole_and_in_order(
    client: TestClient, fake_context: FakeContext
):
    # Sent in 64 KiB pieces: the body is parsed on a thread in 1 MiB batches, several queued.
    data = b"".join(b"%08d,%s\n" % (i, b"v" * (i % 50)) for i in range(250_000))
    boundary = "many-batches"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="format"\r\n\r\ncsv\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()

    def pieces():
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = client.post(
        "/api/v1/datasets",
        content=pieces(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 201, response.text
    assert len(data) > 8 * 1024 * 1024  # under the 10 MiB limit of the fake settings
    assert response.json()["size_bytes"] == len(data)
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.json()["format"] == "csv"
    assert list(fake_context.datasets_storage.objects.values()) == [data]
    assert not list(fake_context.settings.tmp_dir.glob("upload-*"))


def test_name_and_format_fields_override_the_file_name(client: TestClient):
    response = upload(client, b'{"a": 1}\n', filename="blob.txt", name="events", format="ndjson")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "events"
    assert response.json()["format"] == "ndjson"


def test_content_round_trips_byte_for_byte(client: TestClient, fake_context: FakeContext):
    data = bytes(range(256)) * 1000
    dataset = upload(client, data, filename="x.csv").json()
    response = client.get(f"/api/v1/datasets/{dataset['id']}/content")
    assert response.status_code == 200
    assert response.content == data
    # Not validated yet: the bytes are not known to be CSV.
    assert response.headers["content-type"] == "application/octet-stream"
    fake_context.new_uow().datasets._set(UUID(dataset["id"]), status=DatasetStatus.ready)
    ready = client.get(f"/api/v1/datasets/{dataset['id']}/content")
    assert ready.content == data
    assert ready.headers["content-type"].startswith("text/csv")


def test_a_download_names_any_file_in_its_content_disposition(client: TestClient):
    for name in ["résumé «2026».csv", 'a"b\\c.csv', "x\r\nSet-Cookie: a=b.csv", "日本.csv"]:
        dataset = upload(client, b"a\n1\n", filename="d.csv", name=name).json()
        response = client.get(f"/api/v1/datasets/{dataset['id']}/content")
        assert response.status_code == 200, (name, response.text)
        disposition = response.headers["content-disposition"]
        assert "\n" not in disposition and "set-cookie" not in response.headers
        assert disposition.startswith('attachment; filename="')
        encoded = disposition.split("filename*=UTF-8''", 1)[1]
        assert unquote(encoded) == PurePath(name.replace("\\", "/")).name


def test_unsupported_extension_is_415(client: TestClient, fake_context: FakeContext):
    error = assert_error(upload(client, filename="sheet.xlsx"), 415, "unsupported_format")
    assert ".xlsx" in error["message"]
    assert fake_context.datasets_storage.objects == {}


def test_unknown_format_field_is_415(client: TestClient):
    error = assert_error(upload(client, format="xml"), 415, "unsupported_format")
    assert error["details"]["field"] == "format"


def test_file_without_extension_is_415(client: TestClient):
    assert_error(upload(client, filename="data"), 415, "unsupported_format")


def test_over_the_limit_is_413_and_nothing_is_kept(fake_context: FakeContext, api_key: str):
    small = replace(
        fake_context, settings=fake_context.settings.model_copy(update={"max_upload_bytes": 1000})
    )
    with TestClient(create_app(small, PollingJobWakeups()), headers=bearer(api_key)) as client:
        error = assert_error(upload(client, b"x" * 5000), 413, "payload_too_large")
    assert error["details"]["max_upload_bytes"] == 1000
    assert small.datasets_storage.objects == {}
    assert not list(small.settings.tmp_dir.glob("upload-*"))


def test_limit_passed_after_several_batches_is_413_and_nothing_is_kept(
    fake_context: FakeContext, api_key: str
):
    small = replace(
        fake_context,
        settings=fake_context.settings.model_copy(update={"max_upload_bytes": 3 * 1024 * 1024}),
    )
    boundary = "too-big"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
    ).encode()
    sent = []

    def pieces():  # chunked, without a Content-Length to refuse up front
        yield head
        for _ in range(400):
            sent.append(64 * 1024)
            yield b"x" * (64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(create_app(small, PollingJobWakeups()), headers=bearer(api_key)) as client:
        response = client.post(
            "/api/v1/datasets",
            content=pieces(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert_error(response, 413, "payload_too_large")
    assert small.datasets_storage.objects == {}
    assert not list(small.settings.tmp_dir.glob("upload-*"))


def test_declared_length_over_the_limit_is_refused_before_reading(
    fake_context: FakeContext, api_key: str
):
    small = replace(
        fake_context, settings=fake_context.settings.model_copy(update={"max_upload_bytes": 10})
    )
    with TestClient(create_app(small, PollingJobWakeups()), headers=bearer(api_key)) as client:
        assert_error(upload(client, b"x" * 200_000), 413, "payload_too_large")


def test_missing_file_field_is_400(client: TestClient):
    response = client.post("/api/v1/datasets", data={"name": "x"}, files={"other": ("a.csv", b"1")})
    error = assert_error(response, 400, "invalid_input")
    assert error["details"]["field"] == "file"


def test_non_multipart_body_is_400(client: TestClient):
    response = client.post("/api/v1/datasets", content=CSV, headers={"content-type": "text/csv"})
    assert_error(response, 400, "invalid_input")


def test_broken_multipart_is_400(client: TestClient):
    response = client.post(
        "/api/v1/datasets",
        content=b"--nope\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert response.status_code in (400, 422), response.text
    assert "error" in response.json()


def test_broker_down_still_accepts_the_upload(client: TestClient, fake_context: FakeContext):
    fake_context.queue.down = True
    response = upload(client)
    assert response.status_code == 201
    assert response.json()["status"] == "uploaded"


def test_unknown_dataset_is_404_and_malformed_id_is_422(client: TestClient):
    assert_error(client.get(f"/api/v1/datasets/{new_id()}"), 404, "not_found")
    error = assert_error(client.get("/api/v1/datasets/not-a-uuid"), 422, "validation_error")
    assert "dataset_id" in error["message"]
    assert_error(client.get(f"/api/v1/datasets/{new_id()}/content"), 404, "not_found")
    assert_error(client.delete(f"/api/v1/datasets/{new_id()}"), 404, "not_found")


def test_list_pages_newest_first_with_cursor(client: TestClient):
    ids = [upload(client, filename=f"d{i}.csv").json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/v1/datasets", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert client.get("/api/v1/datasets", params={"status": "ready"}).json()["items"] == []
    assert_error(
        client.get("/api/v1/datasets", params={"status": "bogus"}), 422, "validation_error"
    )
    assert_error(client.get("/api/v1/datasets", params={"limit": 0}), 422, "validation_error")


def test_preview_before_ready_is_409(client: TestClient):
    dataset = upload(client).json()
    assert_error(client.get(f"/api/v1/datasets/{dataset['id']}/preview"), 409, "conflict")


def test_delete_removes_record_and_objects(client: TestClient, fake_context: FakeContext):
    dataset = upload(client).json()
    assert client.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 204
    assert fake_context.datasets_storage.objects == {}
    assert_error(client.get(f"/api/v1/datasets/{dataset['id']}"), 404, "not_found")


def test_delete_while_a_job_is_active_is_409(client: TestClient, fake_context: FakeContext):
    dataset = upload(client).json()
    now = datetime.now(UTC)
    uow = fake_context.new_uow()
    uow.jobs.add(
        Job(
            id=new_id(),
            owner_id="default",
            dataset_id=UUID(dataset["id"]),
            status=JobStatus.running,
            steps=[],
            created_at=now,
            updated_at=now,
        )
    )
    error = assert_error(client.delete(f"/api/v1/datasets/{dataset['id']}"), 409, "conflict")
    assert error["details"]["active_jobs"] == 1
    assert fake_context.datasets_storage.objects != {}


def test_health_and_ready(client: TestClient, fake_context: FakeContext):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/live").status_code == 200
    assert client.get("/ready").json()["checks"]["broker"] == "ok"
    fake_context.queue.down = True
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("unavailable")
    assert response.json()["checks"]["database"] == "ok"


def test_an_upload_cut_off_mid_file_is_400_and_not_stored(
    client: TestClient, fake_context: FakeContext
):
    boundary = "cut"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        "a,b\n1,2\n3,"
    ).encode()
    response = client.post(
        "/api/v1/datasets",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    error = assert_error(response, 400, "invalid_input")
    assert error["details"]["field"] == "file"
    assert fake_context.datasets_storage.objects == {}


def test_a_name_over_255_characters_is_422(client: TestClient):
    error = assert_error(upload(client, name="n" * 256), 422, "invalid_params")
    assert error["details"]["field"] == "name"


def test_cursors_out_of_range_are_422_not_500(client: TestClient):
    dataset = upload(client).json()
    huge = str(2**70)
    response = client.get(f"/api/v1/datasets/{dataset['id']}/failed-rows", params={"cursor": huge})
    assert_error(response, 422, "validation_error")


def test_metrics_count_requests_by_route_and_records_by_status(client: TestClient):
    dataset = upload(client).json()
    client.get(f"/api/v1/datasets/{dataset['id']}")
    client.get(f"/api/v1/datasets/{new_id()}")
    text = client.get("/metrics").text
    assert 'assay_datasets{status="uploaded"} 1.0' in text
    assert 'assay_jobs{status="queued"} 0.0' in text
    route = 'route="/api/v1/datasets/{dataset_id}"'
    assert f'assay_http_requests_total{{method="GET",{route},status="200"}} 1.0' in text
    assert f'assay_http_requests_total{{method="GET",{route},status="404"}} 1.0' in text


# --- null_values: the CSV null tokens of an upload or import ---------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("-, ?,  n.a. ", ["-", "?", "n.a."]),  # comma-separated, trimmed
        ('["NA", " padded ", "a,b"]', ["NA", " padded ", "a,b"]),  # JSON: exactly as given
        ("", []),  # sent empty: only empty fields are null
        ("NA,NA,,", ["NA"]),
    ],
)
def test_upload_stores_the_null_values_field(
    client: TestClient, fake_context: FakeContext, sent: str, stored: list[str]
):
    response = upload(client, null_values=sent)
    assert response.status_code == 201, response.text
    assert response.json()["null_values"] == stored
    dataset = fake_context.new_uow().datasets.rows[UUID(response.json()["id"])]
    assert dataset.null_values == stored


def test_upload_without_null_values_keeps_the_default(
    client: TestClient, fake_context: FakeContext
):
    response = upload(client)
    assert response.json()["null_values"] is None
    assert fake_context.new_uow().datasets.rows[UUID(response.json()["id"])].null_values is None


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        ('["NA", 3]', "list of strings"),
        ("[oops", "not a valid JSON list"),
        (",".join(f"t{i}" for i in range(101)), "at most 100"),
        ('["' + "x" * 101 + '"]', "at most 100"),
        ('["a\\nb"]', "line break"),
    ],
)
def test_a_bad_null_values_field_is_422_and_nothing_is_kept(
    client: TestClient, fake_context: FakeContext, sent: str, words: str
):
    error = assert_error(upload(client, null_values=sent), 422, "invalid_params")
    assert error["details"]["field"] == "null_values"
    assert words in error["message"]
    assert fake_context.datasets_storage.objects == {}
    assert fake_context.queue.validations == []


def test_a_null_values_field_over_4_kib_is_413(client: TestClient, fake_context: FakeContext):
    error = assert_error(upload(client, null_values="x," * 3000), 413, "payload_too_large")
    assert error["details"]["field"] == "null_values"
    assert fake_context.datasets_storage.objects == {}


@pytest.mark.parametrize(("sent", "stored"), [(["-", "?"], ["-", "?"]), ("-,?", ["-", "?"])])
def test_an_import_takes_null_values_too(
    client: TestClient, fake_context: FakeContext, sent: object, stored: list[str]
):
    body = {"url": "https://data.example/x.csv", "null_values": sent}
    response = client.post("/api/v1/datasets/import", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["null_values"] == stored
    bad = client.post("/api/v1/datasets/import", json={**body, "null_values": [1]})
    assert bad.status_code == 422


def test_the_worker_reads_the_upload_with_its_null_values(
    client: TestClient, fake_context: FakeContext, tmp_path: Path
):
    from use_cases.datasets import validate_dataset

    content = b"x,y\n1,-\nNA,2\n3,4\n"
    ids = [
        UUID(upload(client, content, **form).json()["id"]) for form in ({}, {"null_values": "-"})
    ]
    uow = fake_context.new_uow()
    for i, dataset_id in enumerate(ids):
        validate_dataset(uow, fake_context.datasets_storage, dataset_id, tmp_path / f"w{i}")
    default, dashes = (uow.datasets.rows[i] for i in ids)
    assert [(c.name, c.type, c.null_count) for c in default.columns or []] == [
        ("x", "integer", 1),
        ("y", "string", 0),
    ]
    assert [(c.name, c.type, c.null_count) for c in dashes.columns or []] == [
        ("x", "string", 0),
        ("y", "integer", 1),
    ]
