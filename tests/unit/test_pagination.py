"""Cursor pages: the helper, and every list route walked page by page over fakes."""

from datetime import UTC, datetime
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.pagination import Page, fetch_size, page_of
from ports.context import Context
from schemas.domain.ids import new_id
from schemas.domain.records import FailedRow, Job, JobEvent, JobStatus


@pytest.mark.parametrize(
    ("fetched", "page"),
    [
        ([], Page([], None)),
        ([1, 2], Page([1, 2], None)),  # fewer than the limit
        ([1, 2, 3], Page([1, 2, 3], None)),  # exactly the limit: nothing follows
        ([1, 2, 3, 4], Page([1, 2, 3], "3")),  # the extra row: continue after the last shown
    ],
)
def test_page_of_rows_fetched_with_one_extra(fetched: list[int], page: Page) -> None:
    assert fetch_size(3) == 4
    assert page_of(fetched, 3, str) == page


def walk(client: TestClient, url: str, limit: int) -> tuple[list[dict], list[int]]:
    """Every item of a list route, following next_cursor; and the size of each page."""
    items: list[dict] = []
    sizes: list[int] = []
    cursor = None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor is not None else {})
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        sizes.append(len(body["items"]))
        cursor = body["next_cursor"]
        if cursor is None:
            return items, sizes


def add_job(context: Context, dataset_id: UUID) -> Job:
    now = datetime.now(UTC)
    job = Job(
        id=new_id(),
        owner_id="default",
        dataset_id=dataset_id,
        status=JobStatus.queued,
        steps=[],
        created_at=now,
        updated_at=now,
    )
    context.new_uow().jobs.add(job)
    return job


def test_jobs_page_newest_first(client: TestClient, fake_context: Context) -> None:
    dataset_id = new_id()
    ids = [str(add_job(fake_context, dataset_id).id) for _ in range(5)]
    items, sizes = walk(client, "/api/v1/jobs", limit=2)
    assert [item["id"] for item in items] == list(reversed(ids))
    assert sizes == [2, 2, 1]
    items, sizes = walk(client, "/api/v1/jobs", limit=5)
    assert len(items) == 5 and sizes == [5]


def test_job_events_page_oldest_first(client: TestClient, fake_context: Context) -> None:
    job = add_job(fake_context, new_id())
    events = fake_context.new_uow().job_events
    stored = [
        events.add(JobEvent(job_id=job.id, type=f"e{i}", created_at=datetime.now(UTC)))
        for i in range(4)
    ]
    items, sizes = walk(client, f"/api/v1/jobs/{job.id}/events", limit=3)
    assert [item["id"] for item in items] == [event.id for event in stored]
    assert sizes == [3, 1]


def test_failed_rows_page_by_line(client: TestClient, fake_context: Context) -> None:
    response = client.post("/api/v1/datasets", files={"file": ("d.csv", b"a\n1\n")})
    dataset_id = UUID(response.json()["id"])
    lines = [3, 7, 8, 20, 21]
    fake_context.new_uow().failed_rows.add_many(
        FailedRow(dataset_id=dataset_id, line_number=n, raw_text="x,y", reason="bad") for n in lines
    )
    items, sizes = walk(client, f"/api/v1/datasets/{dataset_id}/failed-rows", limit=2)
    assert [item["line_number"] for item in items] == lines
    assert sizes == [2, 2, 1]
