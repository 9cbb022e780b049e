"""A validation runs in a child process under the worker's memory budget: an upload nobody
foresaw fails the dataset with the budget named, once, instead of taking the host down."""

import time
from pathlib import Path

import numpy as np
import pytest

from schemas.domain.records import DatasetStatus
from services.processing.datasets import ingest as ingest_module
from tests.fakes import FakeStorage, FakeUnitOfWork
from tests.unit.test_max_rows import CSV, register
from use_cases.datasets import IngestLimits, validate_dataset

MIB = 1024**2


def test_a_validation_under_the_ceiling_gives_the_same_dataset(tmp_path: Path) -> None:
    uow, storage = FakeUnitOfWork(), FakeStorage()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    watched = register(tmp_path / "a", uow, storage, CSV, "csv")
    plain = register(tmp_path / "b", uow, storage, CSV, "csv")

    validate_dataset(
        uow, storage, watched.id, tmp_path / "w1", limits=IngestLimits(memory_budget_mb=512)
    )
    validate_dataset(uow, storage, plain.id, tmp_path / "w2", limits=IngestLimits())

    a, b = uow.datasets.rows[watched.id], uow.datasets.rows[plain.id]
    assert a.status == b.status == DatasetStatus.ready
    assert (a.row_count, a.failed_row_count, a.columns) == (
        b.row_count,
        b.failed_row_count,
        b.columns,
    )
    assert a.parquet_key and b.parquet_key
    assert storage.objects[a.parquet_key] and storage.objects[b.parquet_key]


def test_a_conversion_that_outgrows_the_budget_fails_the_dataset_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inflate(*args: object, **kwargs: object) -> None:
        held = []
        for _ in range(256):  # up to 4 GiB, 16 MiB at a time, every page touched
            held.append(np.ones(2 * MIB))
            time.sleep(0.002)

    monkeypatch.setattr(ingest_module, "ingest", inflate)
    from services.processing import sandbox

    monkeypatch.setattr(sandbox, "ADDRESS_SPACE_PER_BUDGET", 64)  # the watcher, not RLIMIT_AS
    uow, storage = FakeUnitOfWork(), FakeStorage()
    dataset = register(tmp_path, uow, storage, CSV, "csv")

    status = validate_dataset(
        uow, storage, dataset.id, tmp_path / "w", limits=IngestLimits(memory_budget_mb=128)
    )

    failed = uow.datasets.rows[dataset.id]
    assert status == failed.status == DatasetStatus.failed
    assert (failed.error or "").startswith("exceeded the memory budget (128 MiB)")
    assert not list((tmp_path / "w").iterdir())  # its scratch is gone
