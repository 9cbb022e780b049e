"""SQL repositories for datasets and their failed rows."""

# Within a class that defines a `list` method the name means that method, hence
# `builtins.list` in the annotations of such classes.
from __future__ import annotations

import builtins
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import islice
from typing import Any
from uuid import UUID

from pydantic_core import to_jsonable_python
from sqlalchemy import (
    JSON,
    Connection,
    Result,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from db.models import Base, DatasetRow, FailedRowRow, utcnow
from schemas.domain.lifecycle import check_dataset_transition
from schemas.domain.records import Dataset, DatasetStatus, FailedRow, Principal, Record

FAILED_ROWS_BATCH = 1000


def row_values(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for an INSERT or UPDATE: enums by value, JSON columns as plain JSON data."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
        if isinstance(table.c[name].type, JSON):
            value = to_jsonable_python(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        out[name] = value
    return out


def record_values(table: Table, record: Record) -> dict[str, Any]:
    """A record's fields as column values; a None id is left to the database."""
    fields = {name: value for name, value in record if not (name == "id" and value is None)}
    return row_values(table, fields)


def table_of(model: type[Base]) -> Table:
    """A mapped class's table, typed as a Table (`Model.__table__` is declared a FromClause)."""
    return model.metadata.tables[model.__tablename__]


DATASETS = table_of(DatasetRow)
FAILED_ROWS = table_of(FailedRowRow)


def by_id(table: Table) -> tuple[Select[Any], Select[Any]]:
    """`SELECT *` by id, and by id and owner_id, with bound `id` and `owner_id` parameters.

    Built once per table for the hottest reads: a statement built per call costs SQLAlchemy
    ~0.13 ms of CPU to construct and cache-key, a tenth of a GET /jobs/{id}.
    """
    one = select(table).where(table.c.id == bindparam("id"))
    return one, one.where(table.c.owner_id == bindparam("owner_id"))


_DATASET, _OWNED_DATASET = by_id(DATASETS)
_OWNER_SIZE = select(func.coalesce(func.sum(DATASETS.c.size_bytes), 0)).where(
    DATASETS.c.owner_id == bindparam("owner_id")
)
# A dataset's failed rows, only through the dataset of the given owner (the owner filter is
# in the query: another owner's dataset yields no row).
_OWNED_FAILED_ROWS = (
    select(FAILED_ROWS)
    .join(DATASETS, DATASETS.c.id == FAILED_ROWS.c.dataset_id)
    .where(
        FAILED_ROWS.c.dataset_id == bindparam("dataset_id"),
        DATASETS.c.owner_id == bindparam("owner_id"),
        FAILED_ROWS.c.line_number > bindparam("after_line"),
    )
    .order_by(FAILED_ROWS.c.line_number, FAILED_ROWS.c.id)
    .limit(bindparam("limit"))
)


class SqlDatasetRepository:
    """Datasets in the `datasets` table."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(self, dataset: Dataset) -> None:
        """Insert a new dataset."""
        self._db.execute(insert(DATASETS).values(record_values(DATASETS, dataset)))

    def get(self, dataset_id: UUID, principal: Principal) -> Dataset | None:
        """One of the principal's datasets; None when missing or another owner's."""
        params = {"id": dataset_id, "owner_id": principal.owner_id}
        return self._one(self._db.execute(_OWNED_DATASET, params))

    def get_for_worker(self, dataset_id: UUID) -> Dataset | None:
        """One dataset whoever owns it: for workers and recovery, never for a request."""
        return self._one(self._db.execute(_DATASET, {"id": dataset_id}))

    def list(
        self,
        principal: Principal,
        *,
        status: DatasetStatus | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> builtins.list[Dataset]:
        """The principal's datasets, newest first (ids are UUIDv7); `before`: see the port."""
        query = select(DATASETS).where(DATASETS.c.owner_id == principal.owner_id)
        if status is not None:
            query = query.where(DATASETS.c.status == DatasetStatus(status).value)
        if before is not None:
            query = query.where(DATASETS.c.id < before)
        query = query.order_by(DATASETS.c.id.desc()).limit(limit)
        return [Dataset.model_validate(row) for row in self._db.execute(query).mappings()]

    def update(self, dataset_id: UUID, **changes: Any) -> None:
        """Set fields of one dataset (and its updated_at); a status only through `transition`."""
        if "status" in changes:
            raise ValueError("a dataset's status changes through transition (use_cases/lifecycle)")
        values = row_values(DATASETS, {"updated_at": utcnow(), **changes})
        self._db.execute(update(DATASETS).where(DATASETS.c.id == dataset_id).values(values))

    def transition(
        self,
        dataset_id: UUID,
        from_statuses: Sequence[DatasetStatus],
        to_status: DatasetStatus,
        **changes: Any,
    ) -> bool:
        """Compare-and-set the status; False when the dataset was not in from_statuses.

        IllegalTransition, before any SQL, for a move schemas/domain/lifecycle.py does not allow.
        """
        check_dataset_transition(from_statuses, to_status)
        values = row_values(DATASETS, {"updated_at": utcnow(), **changes, "status": to_status})
        statement = (
            update(DATASETS)
            .where(
                DATASETS.c.id == dataset_id,
                DATASETS.c.status.in_([DatasetStatus(s).value for s in from_statuses]),
            )
            .values(values)
        )
        return self._db.execute(statement).rowcount == 1

    def list_stale(
        self, statuses: Sequence[DatasetStatus], updated_before: datetime, limit: int = 100
    ) -> builtins.list[Dataset]:
        """Datasets stuck in one of the statuses since before the given time, oldest first."""
        query = (
            select(DATASETS)
            .where(
                DATASETS.c.status.in_([DatasetStatus(s).value for s in statuses]),
                DATASETS.c.updated_at < updated_before,
            )
            .order_by(DATASETS.c.updated_at, DATASETS.c.id)
            .limit(limit)
        )
        return [Dataset.model_validate(row) for row in self._db.execute(query).mappings()]

    def delete(self, dataset_id: UUID) -> None:
        """Remove a dataset and its failed rows; jobs keep living with dataset_id NULL."""
        # Explicit rather than trusting ON DELETE CASCADE, which SQLite honours only with
        # PRAGMA foreign_keys=ON.
        self._db.execute(delete(FAILED_ROWS).where(FAILED_ROWS.c.dataset_id == dataset_id))
        self._db.execute(delete(DATASETS).where(DATASETS.c.id == dataset_id))

    def count_by_status(self) -> dict[str, int]:
        """How many datasets are in each status (statuses with none are absent)."""
        query = select(DATASETS.c.status, func.count()).group_by(DATASETS.c.status)
        return {status: count for status, count in self._db.execute(query)}

    def total_size_bytes(self, principal: Principal) -> int:
        """The sum of the principal's datasets' size_bytes (their storage quota's use)."""
        params = {"owner_id": principal.owner_id}
        return int(self._db.execute(_OWNER_SIZE, params).scalar_one())

    @staticmethod
    def _one(result: Result[Any]) -> Dataset | None:
        row = result.mappings().one_or_none()
        return Dataset.model_validate(row) if row is not None else None


class SqlFailedRowRepository:
    """Quarantined rows in the `failed_rows` table."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add_many(self, rows: Iterable[FailedRow]) -> int:
        """Insert failed rows in batches (an executemany each); returns how many were written."""
        written = 0
        for batch in _batches(rows, FAILED_ROWS_BATCH):
            values = [record_values(FAILED_ROWS, row) for row in batch]
            self._db.execute(insert(FAILED_ROWS), values)
            written += len(values)
        return written

    def list(
        self, principal: Principal, dataset_id: UUID, *, after_line: int = 0, limit: int = 100
    ) -> builtins.list[FailedRow]:
        """Failed rows of one of the principal's datasets by line number, after `after_line`."""
        params = {
            "dataset_id": dataset_id,
            "owner_id": principal.owner_id,
            "after_line": after_line,
            "limit": limit,
        }
        rows = self._db.execute(_OWNED_FAILED_ROWS, params).mappings()
        return [FailedRow.model_validate(row) for row in rows]

    def delete_for_dataset(self, dataset_id: UUID) -> None:
        """Remove every failed row of a dataset (a re-validation starts clean)."""
        self._db.execute(delete(FAILED_ROWS).where(FAILED_ROWS.c.dataset_id == dataset_id))


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
