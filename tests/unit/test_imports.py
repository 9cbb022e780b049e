"""Imports from a URL over fakes: the route, the submit and worker use cases, the reaper."""

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from ports.fetcher import FetchedFile
from ports.storage import StorageUnavailable
from schemas.domain.records import DatasetFormat, DatasetStatus, KeyScope, Principal
from tests.fakes import FakeContext, FakeFetcher, FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.datasets import recover_stuck_datasets, validate_dataset
from use_cases.errors import InvalidParams
from use_cases.imports import check_import_url, import_dataset, submit_import
from use_cases.keys import create_key
from use_cases.lifecycle import move_dataset

ME = Principal(owner_id="default", scope=KeyScope.write)
URL = "https://data.example/exports/weather.csv"
CSV = b"city,temperature\nOslo,3.5\nLima,19.25\nNuuk\n"


def submitted(uow: FakeUnitOfWork, queue: FakeQueue, url: str = URL):
    return submit_import(
        uow, queue, principal=ME, url=url, name="weather.csv", fmt=DatasetFormat.csv
    )


def run(uow, storage, fetcher, dataset_id: UUID, tmp_path: Path, **kwargs):
    options = {"max_bytes": 1024 * 1024, **kwargs}
    return import_dataset(uow, storage, fetcher, dataset_id, tmp_path / "work", **options)


# --- submit ------------------------------------------------------------------------------------


def test_a_refused_url_is_invalid_params_naming_url() -> None:
    fetcher = FakeFetcher()
    fetcher.refused[URL] = "10.0.0.5 is a private address"
    with pytest.raises(InvalidParams) as refused:
        check_import_url(fetcher, URL)
    assert refused.value.details["field"] == "url"
    assert refused.value.message == "url refused: 10.0.0.5 is a private address"
    with pytest.raises(InvalidParams, match="only http and https"):
        check_import_url(fetcher, "file:///etc/passwd")


def test_submit_records_the_dataset_and_publishes_its_import() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    dataset = submitted(uow, queue)
    stored = uow.datasets.rows[dataset.id]
    assert stored.status == DatasetStatus.uploaded
    assert (stored.source_url, stored.size_bytes, stored.sha256) == (URL, 0, "")
    assert stored.storage_key == f"datasets/{dataset.id}/original.csv"
    assert queue.imports == [dataset.id] and queue.validations == []


def test_a_broker_outage_at_submit_leaves_the_import_to_the_reaper() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    queue.down = True
    dataset = submitted(uow, queue)
    assert uow.datasets.rows[dataset.id].status == DatasetStatus.uploaded
    assert queue.imports == []


# --- the worker --------------------------------------------------------------------------------


def test_the_worker_downloads_stores_and_validates(tmp_path: Path) -> None:
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), FakeStorage(), FakeFetcher()
    fetcher.files[URL] = CSV
    dataset = submitted(uow, queue)
    assert run(uow, storage, fetcher, dataset.id, tmp_path) == DatasetStatus.ready
    stored = uow.datasets.rows[dataset.id]
    assert (stored.row_count, stored.failed_row_count) == (2, 1)
    assert (stored.size_bytes, stored.sha256) == (len(CSV), hashlib.sha256(CSV).hexdigest())
    assert storage.objects[stored.storage_key] == CSV
    assert fetcher.fetched == [URL]
    assert run(uow, storage, fetcher, dataset.id, tmp_path) is None  # already taken
    assert fetcher.fetched == [URL]
    assert list((tmp_path / "work").iterdir()) == []  # scratch removed


def test_a_failed_download_fails_the_dataset_and_stores_nothing(tmp_path: Path) -> None:
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), FakeStorage(), FakeFetcher()
    dataset = submitted(uow, queue)
    # An earlier attempt stored the file and died before recording it: that copy goes too.
    storage.objects[dataset.storage_key] = b"half"
    assert run(uow, storage, fetcher, dataset.id, tmp_path) == DatasetStatus.failed
    stored = uow.datasets.rows[dataset.id]
    assert stored.error == f"import from {URL} failed: the server answered 404 Not Found"
    assert storage.objects == {}


def test_over_the_limit_fails_naming_it(tmp_path: Path) -> None:
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), FakeStorage(), FakeFetcher()
    fetcher.files[URL] = CSV
    dataset = submitted(uow, queue)
    assert run(uow, storage, fetcher, dataset.id, tmp_path, max_bytes=10) == DatasetStatus.failed
    assert "over the import limit of 10 bytes" in (uow.datasets.rows[dataset.id].error or "")
    assert storage.objects == {}


class BrokenPut(FakeStorage):
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        self.objects[key] = b"half-written"
        raise StorageUnavailable("storage went away mid-write")


@pytest.mark.parametrize("final", [False, True])
def test_a_storage_outage_is_retried_and_leaves_nothing_half_written(tmp_path: Path, final):
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), BrokenPut(), FakeFetcher()
    fetcher.files[URL] = CSV
    dataset = submitted(uow, queue)
    with pytest.raises(StorageUnavailable):
        run(uow, storage, fetcher, dataset.id, tmp_path, final_attempt=final)
    stored = uow.datasets.rows[dataset.id]
    assert storage.objects == {}
    if final:
        assert stored.status == DatasetStatus.failed
        assert stored.error == (
            "import could not complete: StorageUnavailable: storage went away mid-write"
        )
    else:
        assert stored.status == DatasetStatus.uploaded  # for the retry
        assert stored.sha256 == ""  # not stored: the retry downloads again


def test_a_retry_after_the_file_was_stored_only_validates(tmp_path: Path) -> None:
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), FakeStorage(), FakeFetcher()
    dataset = submitted(uow, queue)
    storage.objects[dataset.storage_key] = CSV
    uow.datasets.update(dataset.id, size_bytes=len(CSV), sha256="ab" * 32)
    assert run(uow, storage, fetcher, dataset.id, tmp_path) == DatasetStatus.ready
    assert fetcher.fetched == []


def test_progress_is_recorded_as_the_size_while_downloading(tmp_path: Path, monkeypatch) -> None:
    import use_cases.imports as imports_module

    monkeypatch.setattr(imports_module, "PROGRESS_EVERY_S", 0.0)
    uow, queue, storage = FakeUnitOfWork(), FakeQueue(), FakeStorage()
    dataset = submitted(uow, queue)
    seen: list[tuple[DatasetStatus, int]] = []

    class Trickle(FakeFetcher):
        def fetch(self, url, destination, *, max_bytes, on_progress=None) -> FetchedFile:
            assert on_progress is not None
            for received in (10, 20, len(CSV)):
                on_progress(received)
                row = uow.datasets.rows[dataset.id]
                seen.append((row.status, row.size_bytes))
            destination.write_bytes(CSV)
            return FetchedFile(destination, len(CSV), hashlib.sha256(CSV).hexdigest(), url)

    assert run(uow, storage, Trickle(), dataset.id, tmp_path) == DatasetStatus.ready
    assert seen == [(DatasetStatus.validating, n) for n in (10, 20, len(CSV))]


def test_a_dataset_deleted_while_it_downloads_leaves_no_objects(tmp_path: Path) -> None:
    uow, queue, storage = FakeUnitOfWork(), FakeQueue(), FakeStorage()
    dataset = submitted(uow, queue)

    class DeletedMeanwhile(FakeFetcher):
        def fetch(self, url, destination, *, max_bytes, on_progress=None) -> FetchedFile:
            uow.datasets.delete(dataset.id)
            destination.write_bytes(CSV)
            return FetchedFile(destination, len(CSV), "cd" * 32, url)

    assert run(uow, storage, DeletedMeanwhile(), dataset.id, tmp_path) is None
    assert storage.objects == {}


def test_a_validation_message_for_an_import_not_downloaded_yet_changes_nothing(tmp_path: Path):
    uow, queue, storage = FakeUnitOfWork(), FakeQueue(), FakeStorage()
    dataset = submitted(uow, queue)
    assert validate_dataset(uow, storage, dataset.id, tmp_path) is None
    assert uow.datasets.rows[dataset.id].status == DatasetStatus.uploaded


# --- recovery ----------------------------------------------------------------------------------


def test_the_reaper_sends_imports_not_downloaded_to_the_import_task() -> None:
    uow, queue = FakeUnitOfWork(), FakeQueue()
    queue.down = True  # nothing published at submit
    never_fetched = submitted(uow, queue)
    fetched = submitted(uow, queue)
    uow.datasets.update(fetched.id, size_bytes=len(CSV), sha256="ab" * 32)
    died_downloading = submitted(uow, queue)
    with uow:
        move_dataset(uow, died_downloading.id, DatasetStatus.uploaded, DatasetStatus.validating)
    old = datetime.now(UTC) - timedelta(hours=2)
    for dataset_id in (never_fetched.id, fetched.id, died_downloading.id):
        uow.datasets.rows[dataset_id] = uow.datasets.rows[dataset_id].model_copy(
            update={"updated_at": old}
        )
    queue.down = False
    acted = recover_stuck_datasets(uow, queue, grace_s=60, validating_timeout_s=300)
    assert acted == 3
    assert sorted(queue.imports) == sorted([never_fetched.id, died_downloading.id])
    assert queue.validations == [fetched.id]
    assert uow.datasets.rows[died_downloading.id].status == DatasetStatus.uploaded


# --- the route ---------------------------------------------------------------------------------


def post(client: TestClient, **body: object):
    return client.post("/api/v1/datasets/import", json=body)


def test_the_route_answers_202_with_the_dataset(client: TestClient, fake_context: FakeContext):
    response = post(client, url="https://data.example/exports/my%20readings.ndjson?v=2")
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["name"], body["format"]) == (
        "uploaded",
        "my readings.ndjson",
        "ndjson",
    )
    assert body["source_url"] == "https://data.example/exports/my%20readings.ndjson?v=2"
    assert (body["size_bytes"], body["sha256"], body["error"]) == (0, "", None)
    assert body["links"]["self"] == f"/api/v1/datasets/{body['id']}"
    assert fake_context.queue.imports == [UUID(body["id"])]
    assert fake_context.fetcher.fetched == []  # the download is the worker's
    named = post(client, url="https://data.example/x", name="readings", format="CSV")
    assert named.status_code == 202, named.text
    assert (named.json()["name"], named.json()["format"]) == ("readings", "csv")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://data.example/x.csv", "x.csv"])
def test_the_route_refuses_urls_that_are_not_http(
    client: TestClient, fake_context: FakeContext, url: str
):
    response = post(client, url=url)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("invalid_params", "url")
    assert fake_context.queue.imports == []
    assert fake_context.new_uow().datasets.rows == {}


def test_the_url_is_checked_before_the_format(client: TestClient, fake_context: FakeContext):
    fake_context.fetcher.refused["https://internal.example/data"] = "10.0.0.5 is a private address"
    response = post(client, url="https://internal.example/data", format="xml")
    assert response.status_code == 422, response.text
    assert "10.0.0.5 is a private address" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"url": "https://data.example/download"}, 415, "format"),  # no extension, no format
        ({"url": "https://data.example/x.xlsx"}, 415, "format"),
        ({"url": "https://data.example/x.csv", "format": "xml"}, 415, "format"),
        ({"url": "https://data.example/x.csv", "name": "n" * 256}, 422, "name"),
    ],
)
def test_the_route_refuses_a_format_or_name_it_cannot_use(
    client: TestClient, fake_context: FakeContext, body: dict, status: int, field: str
):
    response = client.post("/api/v1/datasets/import", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["details"]["field"] == field
    assert fake_context.queue.imports == []


def test_the_route_needs_a_url_and_a_write_key(client: TestClient, fake_context: FakeContext):
    missing = client.post("/api/v1/datasets/import", json={"name": "x"})
    assert missing.status_code == 422
    assert missing.json()["error"]["code"] == "validation_error"
    _, reader = create_key(fake_context.new_uow(), owner_id="default", scope=KeyScope.read)
    read_only = client.post(
        "/api/v1/datasets/import",
        json={"url": URL},
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert read_only.status_code == 403, read_only.text


# --- the owner's storage quota ----------------------------------------------------------------


def test_an_import_is_cut_at_what_the_owners_quota_leaves(tmp_path: Path) -> None:
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), FakeStorage(), FakeFetcher()
    fetcher.files[URL] = CSV
    earlier = submitted(uow, queue, url="https://data.example/earlier.csv")
    uow.datasets.rows[earlier.id] = earlier.model_copy(update={"size_bytes": 90})
    dataset = submitted(uow, queue)

    status = run(uow, storage, fetcher, dataset.id, tmp_path, quota_bytes=100)

    assert status == DatasetStatus.failed
    assert "over the import limit of 10 bytes" in (uow.datasets.rows[dataset.id].error or "")
    assert storage.objects == {}
    room = run(uow, storage, fetcher, submitted(uow, queue).id, tmp_path, quota_bytes=10**6)
    assert room == DatasetStatus.ready


def test_a_full_quota_refuses_the_import_at_submit(
    client: TestClient, fake_context: FakeContext
) -> None:
    settings = fake_context.settings.model_copy(update={"owner_quota_bytes": 50})
    object.__setattr__(fake_context, "settings", settings)
    uow = fake_context.new_uow()
    earlier = submitted(uow, fake_context.queue, url="https://data.example/earlier.csv")
    uow.datasets.rows[earlier.id] = earlier.model_copy(update={"size_bytes": 50})

    response = post(client, url=URL)

    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert response.json()["error"]["details"]["quota_bytes"] == 50
