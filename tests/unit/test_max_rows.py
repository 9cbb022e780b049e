"""ASSAY_MAX_ROWS: a dataset of more rows ends failed at validation, naming the limit."""

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import DatasetFormat, DatasetStatus, KeyScope, Principal
from schemas.settings import Settings
from services.processing.datasets import csv_reader, ingest, parquet_reader
from tests.fakes import FakeContext, FakeFetcher, FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.datasets import IngestLimits, ReceivedFile, register_dataset, validate_dataset
from use_cases.imports import import_dataset, submit_import

ME = Principal(owner_id="default", scope=KeyScope.write)
# 5 good rows and one failed row (line 4): the limit counts the good ones.
CSV = b"a,b\n1,x\n2,y\n3\n4,z\n5,w\n6,v\n"
LIMIT_ERROR = (
    "too many rows: more than {n} rows, the limit of {n} rows per dataset (ASSAY_MAX_ROWS)"
)


def register(tmp_path: Path, uow: FakeUnitOfWork, storage: FakeStorage, content: bytes, fmt: str):
    source = tmp_path / "upload"
    source.write_bytes(content)
    return register_dataset(
        uow,
        storage,
        FakeQueue(),
        principal=ME,
        name="d",
        fmt=DatasetFormat(fmt),
        received=ReceivedFile(path=source, size_bytes=len(content), sha256="0" * 64),
    )


def parquet_bytes(tmp_path: Path, rows: int) -> bytes:
    path = tmp_path / "made.parquet"
    pq.write_table(pa.table({"n": list(range(rows)), "s": ["x"] * rows}), path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("csv", CSV),
        ("ndjson", b"".join(b'{"a": %d}\n' % i for i in range(5)) + b"not json\n"),
        ("json", b"[" + b", ".join(b'{"a": %d}' % i for i in range(5)) + b"]"),
    ],
)
@pytest.mark.parametrize(("limit", "ready"), [(4, False), (5, True), (6, True), (None, True)])
def test_more_rows_than_the_limit_fail_the_dataset(
    tmp_path: Path, fmt: str, content: bytes, limit: int | None, ready: bool
) -> None:
    uow, storage = FakeUnitOfWork(), FakeStorage()
    dataset = register(tmp_path, uow, storage, content, fmt)

    status = validate_dataset(
        uow, storage, dataset.id, tmp_path / "work", limits=IngestLimits(max_rows=limit)
    )

    stored = uow.datasets.rows[dataset.id]
    if ready:
        assert status == DatasetStatus.ready and stored.row_count == 5
    else:
        assert status == DatasetStatus.failed
        assert stored.error == LIMIT_ERROR.format(n=4)
        assert stored.parquet_key is None and stored.row_count is None
    assert not list((tmp_path / "work").iterdir()), "scratch files left behind"


def test_a_parquet_file_is_refused_from_its_footer_before_any_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted: list[Path] = []
    real_convert = parquet_reader.convert

    def spy(con: Any, source: Path, parquet_out: Path) -> None:
        converted.append(source)
        real_convert(con, source, parquet_out)

    monkeypatch.setattr(parquet_reader, "convert", spy)
    uow, storage = FakeUnitOfWork(), FakeStorage()
    dataset = register(tmp_path, uow, storage, parquet_bytes(tmp_path, 1000), "parquet")

    status = validate_dataset(
        uow, storage, dataset.id, tmp_path / "work", limits=IngestLimits(max_rows=999)
    )

    assert status == DatasetStatus.failed and converted == []
    assert uow.datasets.rows[dataset.id].error == (
        "too many rows: 1000 rows, over the limit of 999 rows per dataset (ASSAY_MAX_ROWS)"
    )
    other = register(tmp_path, uow, storage, parquet_bytes(tmp_path, 1000), "parquet")
    assert validate_dataset(
        uow, storage, other.id, tmp_path / "w2", limits=IngestLimits(max_rows=1000)
    ) == (DatasetStatus.ready)
    assert uow.datasets.rows[other.id].row_count == 1000 and len(converted) == 1


def test_reading_a_csv_stops_one_row_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[int] = []
    real_copy = csv_reader.copy_to_parquet

    def spy(con: Any, relation: str, out: Path, *args: Any) -> Any:
        columns = real_copy(con, relation, out, *args)
        copied.append(pq.read_metadata(out).num_rows)
        return columns

    monkeypatch.setattr(csv_reader, "copy_to_parquet", spy)
    source = tmp_path / "big.csv"
    source.write_bytes(b"n,s\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(300_000)))

    with pytest.raises(ingest.DatasetUnusable, match=r"more than 1000 rows, the limit of 1000"):
        ingest.ingest(
            source, DatasetFormat.csv, tmp_path / "copy.parquet", tmp_path / "w", max_rows=1000
        )

    assert copied == [1001]  # the other 298,999 rows were never converted


@pytest.mark.parametrize(("limit", "ready"), [(29_998, False), (29_999, True)])
def test_the_limit_holds_when_a_broken_quote_makes_the_csv_be_read_again(
    tmp_path: Path, limit: int, ready: bool
) -> None:
    # The first read loses the rows after the broken quote; the read again in segments finds
    # them, and the limit applies to that one.
    lines = [b"id,name,score"] + [b"%d,n%d,%d" % (i, i, i * 10) for i in range(1, 30_001)]
    lines[25_000] = b'25000,"oops,250000'
    source = tmp_path / "quote.csv"
    source.write_bytes(b"\n".join(lines) + b"\n")
    copy = tmp_path / "copy.parquet"

    if not ready:
        with pytest.raises(ingest.DatasetUnusable, match=rf"more than {limit} rows"):
            ingest.ingest(source, DatasetFormat.csv, copy, tmp_path / "w", max_rows=limit)
        return
    result = ingest.ingest(source, DatasetFormat.csv, copy, tmp_path / "w", max_rows=limit)
    assert (result.row_count, result.failed_row_count) == (29_999, 1)


def test_an_import_over_the_limit_fails(tmp_path: Path) -> None:
    uow, queue, storage, fetcher = FakeUnitOfWork(), FakeQueue(), FakeStorage(), FakeFetcher()
    url = "https://data.example/rows.csv"
    fetcher.files[url] = CSV
    dataset = submit_import(
        uow, queue, principal=ME, url=url, name="rows.csv", fmt=DatasetFormat.csv
    )

    status = import_dataset(
        uow,
        storage,
        fetcher,
        dataset.id,
        tmp_path / "work",
        max_bytes=1024,
        limits=IngestLimits(max_rows=4),
    )

    assert status == DatasetStatus.failed
    assert uow.datasets.rows[dataset.id].error == LIMIT_ERROR.format(n=4)


def test_the_setting_is_optional_and_reaches_the_validation_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.tasks as tasks

    assert Settings(_env_file=None).max_rows is None
    monkeypatch.setenv("ASSAY_MAX_ROWS", "4")
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    assert settings.max_rows == 4

    uow, storage = FakeUnitOfWork(), FakeStorage()
    context = FakeContext(
        settings=settings,
        new_uow=lambda: uow,
        datasets_storage=storage,
        results_storage=FakeStorage(),
        queue=FakeQueue(),
    )
    monkeypatch.setattr(tasks, "context_of", lambda task: context)
    dataset = register(tmp_path, uow, storage, CSV, "csv")

    tasks.validate_dataset_task.run(str(dataset.id))

    stored = uow.datasets.rows[dataset.id]
    assert stored.status == DatasetStatus.failed and stored.error == LIMIT_ERROR.format(n=4)
