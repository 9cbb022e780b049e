"""Dataset use cases over fakes, with the real ingest service."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.domain.records import DatasetFormat, DatasetStatus, KeyScope, Principal
from tests.fakes import FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.datasets import (
    IngestLimits,
    ReceivedFile,
    delete_dataset,
    recover_stuck_datasets,
    register_dataset,
    validate_dataset,
)
from use_cases.errors import NotFound

ME = Principal(owner_id="default", scope=KeyScope.write)
THEM = Principal(owner_id="mallory", scope=KeyScope.admin)


class BrokenStorage(FakeStorage):
    def download_file(self, key: str, path: Path) -> None:
        raise ConnectionError("storage went away")


def register(tmp_path: Path, uow, storage, queue, content: bytes, fmt=DatasetFormat.csv):
    source = tmp_path / "upload"
    source.write_bytes(content)
    return register_dataset(
        uow,
        storage,
        queue,
        principal=ME,
        name="d",
        fmt=fmt,
        received=ReceivedFile(path=source, size_bytes=len(content), sha256="0" * 64),
    )


def test_validation_keeps_good_rows_and_failed_rows(tmp_path: Path):
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    dataset = register(tmp_path, uow, storage, queue, b"a,b\n1,2\n3\n4,5\n")
    assert queue.validations == [dataset.id]

    status = validate_dataset(uow, storage, dataset.id, tmp_path / "work")

    assert status == DatasetStatus.ready
    stored = uow.datasets.rows[dataset.id]
    assert (stored.row_count, stored.failed_row_count) == (2, 1)
    assert [(r.line_number, r.raw_text) for r in uow.failed_rows.list(ME, dataset.id)] == [(3, "3")]
    assert stored.parquet_key is not None and storage.exists(stored.parquet_key)
    assert not list((tmp_path / "work").iterdir()), "scratch files left behind"


def test_a_dataset_is_its_uploaders_alone(tmp_path: Path):
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    dataset = register(tmp_path, uow, storage, queue, b"a,b\n1,2\n3\n")
    assert dataset.owner_id == ME.owner_id
    validate_dataset(uow, storage, dataset.id, tmp_path / "work")  # the worker sees every owner

    assert uow.datasets.get(dataset.id, THEM) is None
    assert uow.datasets.list(THEM) == []
    assert uow.failed_rows.list(THEM, dataset.id) == []
    with pytest.raises(NotFound):
        delete_dataset(uow, storage, dataset.id, THEM)
    assert uow.datasets.get(dataset.id, ME) is not None and storage.objects

    delete_dataset(uow, storage, dataset.id, ME)
    assert uow.datasets.get_for_worker(dataset.id) is None and storage.objects == {}


def test_a_second_delivery_does_nothing(tmp_path: Path):
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    dataset = register(tmp_path, uow, storage, queue, b"a\n1\n")
    assert validate_dataset(uow, storage, dataset.id, tmp_path) == DatasetStatus.ready
    assert validate_dataset(uow, storage, dataset.id, tmp_path) is None


def test_unusable_file_fails_the_dataset_with_its_reason(tmp_path: Path):
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    dataset = register(tmp_path, uow, storage, queue, b"")
    assert validate_dataset(uow, storage, dataset.id, tmp_path) == DatasetStatus.failed
    error = uow.datasets.rows[dataset.id].error
    assert error is not None and "empty" in error


def test_transient_error_returns_the_dataset_to_uploaded_for_a_retry(tmp_path: Path):
    uow, queue = FakeUnitOfWork(), FakeQueue()
    storage = BrokenStorage()
    dataset = register(tmp_path, uow, storage, queue, b"a\n1\n")
    with pytest.raises(ConnectionError):
        validate_dataset(uow, storage, dataset.id, tmp_path, final_attempt=False)
    assert uow.datasets.rows[dataset.id].status == DatasetStatus.uploaded
    with pytest.raises(ConnectionError):
        validate_dataset(uow, storage, dataset.id, tmp_path, final_attempt=True)
    failed = uow.datasets.rows[dataset.id]
    assert failed.status == DatasetStatus.failed
    assert failed.error is not None and "storage went away" in failed.error


def test_reaper_republishes_unclaimed_uploads_and_resets_dead_validations(tmp_path: Path):
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    queue.down = True
    lost = register(tmp_path, uow, storage, queue, b"a\n1\n")
    stuck = register(tmp_path, uow, storage, queue, b"a\n1\n")
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    uow.datasets.rows[lost.id] = uow.datasets.rows[lost.id].model_copy(
        update={"updated_at": long_ago}
    )
    uow.datasets.rows[stuck.id] = uow.datasets.rows[stuck.id].model_copy(
        update={"status": DatasetStatus.validating, "updated_at": long_ago}
    )
    queue.down = False

    acted = recover_stuck_datasets(uow, queue, grace_s=60, validating_timeout_s=3600)

    assert acted == 2
    assert set(queue.validations) == {lost.id, stuck.id}
    assert uow.datasets.rows[stuck.id].status == DatasetStatus.uploaded
    # Touched: the next pass waits another grace period instead of publishing again.
    assert recover_stuck_datasets(uow, queue, grace_s=60, validating_timeout_s=3600) == 0


def test_sweep_removes_only_old_scratch_folders(tmp_path: Path):
    import os

    from workers.reaper import sweep_scratch

    old, fresh, other = tmp_path / "job-old", tmp_path / "validate-new", tmp_path / "upload-x"
    for folder in (old, fresh, other):
        folder.mkdir()
    os.utime(old, (0, 0))
    os.utime(other, (0, 0))
    assert sweep_scratch(tmp_path, older_than_s=3600) == 1
    assert not old.exists() and fresh.exists() and other.exists()


def test_keep_alive_refreshes_a_long_validation(tmp_path: Path, monkeypatch):
    import use_cases.datasets as datasets_module

    monkeypatch.setattr(datasets_module, "KEEP_ALIVE_S", 0.02)
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    dataset = register(tmp_path, uow, storage, queue, b"a\n1\n")
    seen: list[datetime] = []
    real_update = uow.datasets.update

    def spy(dataset_id, **changes):
        seen.append(datetime.now(UTC))
        real_update(dataset_id, **changes)

    monkeypatch.setattr(uow.datasets, "update", spy)
    import services.processing.datasets.ingest as ingest_module

    slow_ingest = ingest_module.ingest

    def slow(*args, **kwargs):
        import time

        time.sleep(0.2)
        return slow_ingest(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "ingest", slow)  # imported when validation runs
    validate_dataset(uow, storage, dataset.id, tmp_path, keep_alive=lambda: uow)
    assert len(seen) >= 3


def test_validation_gives_duckdb_the_memory_limit_it_was_given(tmp_path: Path, monkeypatch):
    import services.processing.datasets.ingest as ingest_module

    limits: list[str] = []
    real_connect = ingest_module.connect

    def spy(workdir: Path, memory_limit: str):
        con = real_connect(workdir, memory_limit)
        setting = con.execute("SELECT current_setting('memory_limit')").fetchone()
        assert setting is not None
        limits.append(setting[0])
        return con

    monkeypatch.setattr(ingest_module, "connect", spy)
    uow, storage, queue = FakeUnitOfWork(), FakeStorage(), FakeQueue()
    dataset = register(tmp_path, uow, storage, queue, b"a\n1\n")
    status = validate_dataset(
        uow, storage, dataset.id, tmp_path, limits=IngestLimits(memory_limit="300MiB")
    )
    assert status == DatasetStatus.ready
    assert limits == ["300.0 MiB"]
