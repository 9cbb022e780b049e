"""Helpers of the export tests: a destination database, a ready dataset, a run of the worker."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from ports.repositories import UnitOfWork
from schemas.domain.ids import new_id
from schemas.domain.records import Dataset, DatasetFormat, DatasetStatus, KeyScope, Principal
from services.exports.postgres import PostgresTableLoader
from tests.fakes import FakeQueue, FakeStorage
from tests.fixtures.databases import postgres_database, postgres_dsn
from use_cases.run_export import run_export


@contextmanager
def destination_database() -> Iterator[str]:
    """A private PostgreSQL database to export into, as a URL with a password (trust auth
    ignores it; the tests check it never shows)."""
    with postgres_database() as url:
        yield url.replace("postgres@", "postgres:S3cretPassw0rd@")


def dsn_of(url: str) -> str:
    return postgres_dsn(url.rsplit("/", 1)[1])


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn_of(url), autocommit=True) as db:
        cursor = db.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def principal(owner: str = "alice") -> Principal:
    return Principal(owner_id=owner, scope=KeyScope.write)


def add_dataset(
    uow: UnitOfWork, storage: FakeStorage, table: pa.Table, tmp: Path, owner: str = "alice"
) -> UUID:
    """A ready dataset of `owner` whose typed copy is `table`."""
    path = tmp / f"{new_id()}.parquet"
    pq.write_table(table, path, row_group_size=max(1, table.num_rows // 3 or 1))
    dataset_id = new_id()
    key = f"datasets/{dataset_id}/data.parquet"
    storage.put_file(key, path)
    now = datetime.now(UTC)
    with uow:
        uow.datasets.add(
            Dataset(
                id=dataset_id,
                owner_id=owner,
                name="data.csv",
                format=DatasetFormat.csv,
                status=DatasetStatus.ready,
                size_bytes=path.stat().st_size,
                sha256="0" * 64,
                storage_key=f"datasets/{dataset_id}/data.csv",
                parquet_key=key,
                row_count=table.num_rows,
                created_at=now,
                updated_at=now,
            )
        )
        uow.commit()
    return dataset_id


def run(
    new_uow: Callable[[], UnitOfWork],
    storage: FakeStorage,
    loader: PostgresTableLoader,
    export_id: UUID,
    tmp: Path,
    **overrides: Any,
) -> str:
    """One delivery of the export's message to a worker."""
    options: dict[str, Any] = {
        "worker_id": "test-worker",
        "workdir": tmp / "work",
        "heartbeat_interval_s": 0.05,
        "max_attempts": 3,
        "is_transient": lambda exc: False,
    }
    return run_export(new_uow, storage, FakeStorage(), loader, export_id, **(options | overrides))


__all__ = ["FakeQueue"]
