"""SQL repositories for jobs, their events and their artifacts."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from db.models import ArtifactRow, JobEventRow, JobRow
from repositories.datasets import record_values
from schemas.records import ACTIVE_JOB_STATUSES, Artifact, Job, JobEvent

JOBS: Table = JobRow.__table__  # type: ignore[assignment]
JOB_EVENTS: Table = JobEventRow.__table__  # type: ignore[assignment]
ARTIFACTS: Table = ArtifactRow.__table__  # type: ignore[assignment]


class SqlJobRepository:
    """Jobs in the `jobs` table."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, job: Job) -> None:
        """Insert a new job."""
        self._session.execute(insert(JOBS).values(record_values(JOBS, job)))

    def get(self, job_id: UUID, owner_id: str | None = None) -> Job | None:
        """One job, or None when it does not exist or belongs to another owner."""
        query = select(JOBS).where(JOBS.c.id == job_id)
        if owner_id is not None:
            query = query.where(JOBS.c.owner_id == owner_id)
        row = self._session.execute(query).mappings().one_or_none()
        return Job.model_validate(row) if row is not None else None

    def count_active_for_dataset(self, dataset_id: UUID) -> int:
        """How many queued or running jobs read this dataset."""
        query = (
            select(func.count())
            .select_from(JOBS)
            .where(
                JOBS.c.dataset_id == dataset_id,
                JOBS.c.status.in_([status.value for status in ACTIVE_JOB_STATUSES]),
            )
        )
        return self._session.execute(query).scalar_one()


class SqlJobEventRepository:
    """The append-only `job_events` history."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, event: JobEvent) -> JobEvent:
        """Append an event; returns it with its generated id."""
        statement = insert(JOB_EVENTS).values(record_values(JOB_EVENTS, event))
        result = self._session.execute(statement)
        event_id = result.inserted_primary_key[0]  # type: ignore[attr-defined]
        return event.model_copy(update={"id": event_id})

    def list_for_job(self, job_id: UUID, *, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events of one job in id order, starting after `after_id`."""
        query = (
            select(JOB_EVENTS)
            .where(JOB_EVENTS.c.job_id == job_id, JOB_EVENTS.c.id > after_id)
            .order_by(JOB_EVENTS.c.id)
            .limit(limit)
        )
        return [JobEvent.model_validate(row) for row in self._session.execute(query).mappings()]


class SqlArtifactRepository:
    """Files jobs produced, in the `artifacts` table."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, artifact: Artifact) -> None:
        """Record an artifact a job produced."""
        self._session.execute(insert(ARTIFACTS).values(record_values(ARTIFACTS, artifact)))

    def list_for_job(self, job_id: UUID) -> list[Artifact]:
        """Artifacts of one job, by name."""
        query = select(ARTIFACTS).where(ARTIFACTS.c.job_id == job_id).order_by(ARTIFACTS.c.name)
        return [Artifact.model_validate(row) for row in self._session.execute(query).mappings()]
