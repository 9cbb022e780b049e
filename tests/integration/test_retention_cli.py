"""`assay retention [--dry-run] [--json]`, run as an operator runs it (embedded SQLite, local
files)."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db.engine import make_engine
from db.migrations import upgrade_to_head
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import DatasetStatus, JobStatus
from tests.integration.test_repositories_contract import add_dataset, add_job

ROOT = Path(__file__).resolve().parents[2]


def assay(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env |= {
        "ASSAY_DATA_DIR": str(data_dir),
        "ASSAY_RETENTION_JOB_DAYS": "30",
        "ASSAY_RETENTION_DATASET_UNUSED_DAYS": "30",
        "ASSAY_RETENTION_OWNERS": '{"bob": {"dataset_unused_days": null}}',
        "COLUMNS": "250",  # the table's width when not on a terminal
    }
    return subprocess.run(
        [sys.executable, "-m", "main", "retention", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow  # three CLI processes
def test_dry_run_lists_then_a_run_deletes_records_and_files(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'assay.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    uow = SqlUnitOfWork(engine)
    old = datetime.now(UTC) - timedelta(days=40)
    status = {"status": DatasetStatus.ready, "created_at": old, "updated_at": old}
    expired = add_dataset(uow, **status)
    kept = add_dataset(uow, owner_id="bob", **status)
    job = add_job(uow, None, status=JobStatus.failed, created_at=old, finished_at=old)
    files = {
        tmp_path / "objects" / "datasets" / "datasets" / str(expired.id) / "original.csv",
        tmp_path / "objects" / "job-results" / "jobs" / str(job.id) / "attempt-1" / "a.csv",
    }
    for path in files:
        path.parent.mkdir(parents=True)
        path.write_text("x")

    listed = assay(tmp_path, "--dry-run", "--json")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert [(i["kind"], i["id"]) for i in items] == [
        ("job", str(job.id)),
        ("dataset", str(expired.id)),
    ]
    assert items[0]["reason"] == "failed more than 30 day(s) ago"
    table = assay(tmp_path, "--dry-run")
    assert table.returncode == 0 and str(expired.id) in table.stdout
    assert all(path.exists() for path in files)

    swept = assay(tmp_path)
    assert swept.returncode == 0, swept.stderr
    assert "deleted 2 expired record(s)" in swept.stdout
    assert not any(path.exists() for path in files)
    with uow:
        assert uow.datasets.get_for_worker(expired.id) is None
        assert uow.jobs.get_for_worker(job.id) is None
        assert uow.datasets.get_for_worker(kept.id) is not None
    engine.dispose()
