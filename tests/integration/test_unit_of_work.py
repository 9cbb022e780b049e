"""SqlUnitOfWork on each backend: a commit that need not wait for the disk is still a commit."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from db.engine import make_engine
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import JobEvent
from tests.integration.test_job_repositories_contract import (
    ALICE,
    add_dataset,
    add_job,
    make_job,
)


def test_a_non_durable_commit_is_visible_and_the_next_transaction_is_durable(
    migrated_database_url: str,
):
    engine = make_engine(migrated_database_url)
    try:
        uow = SqlUnitOfWork(engine)
        job = add_job(uow, add_dataset(uow).id)
        with uow:
            uow.job_events.add(
                JobEvent(job_id=job.id, type="enqueued", payload={}, created_at=datetime.now(UTC))
            )
            uow.commit(durable=False)
        with uow:
            assert [e.type for e in uow.job_events.list_for_job(ALICE, job.id)] == ["enqueued"]
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:  # SET LOCAL ended with its transaction
                setting = connection.execute(text("SHOW synchronous_commit")).scalar_one()
            assert setting == "on"
    finally:
        engine.dispose()


def test_leaving_the_block_without_commit_rolls_back(migrated_database_url: str):
    engine = make_engine(migrated_database_url)
    try:
        uow = SqlUnitOfWork(engine)
        dataset = add_dataset(uow)
        with uow:
            uow.jobs.add(make_job(dataset.id))
        with uow:
            assert uow.jobs.count_active_for_dataset(dataset.id) == 0
        with pytest.raises(RuntimeError):
            uow.commit()  # outside a block
    finally:
        engine.dispose()
