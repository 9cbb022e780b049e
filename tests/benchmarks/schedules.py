"""A 1-second schedule with two beats: one run per due time, none doubled, none missed.

    uv run python -m tests.benchmarks.schedules [--seconds 120]

Starts, on PostgreSQL and Redis at 127.0.0.1 (a fresh database and Redis database 9), two
`assay beat` and two `assay worker` processes (the workers run the ticks the beats send, so two
ticks of the same second really run at once), creates a schedule with `interval_seconds: 1`
on a dataset that is never validated (its jobs wait: only the scheduling is measured), waits
`--seconds`, stops everything and counts the runs whose due time fell in the window.
"""

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

from schemas.domain.ids import new_id
from schemas.domain.records import Dataset, DatasetFormat, DatasetStatus, KeyScope, Principal
from schemas.domain.schedules import ScheduleAction
from tests.benchmarks.jobs_vs_pandas import stop_processes
from tests.e2e.conftest import assay
from tests.fixtures.databases import postgres_database, postgres_dsn

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120)
    args = parser.parse_args()
    redis.Redis(db=9).flushdb()
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "ASSAY_DATABASE_URL": url,
            "ASSAY_BROKER_URL": "redis://127.0.0.1:6379/9",
            "ASSAY_LOG_LEVEL": "WARNING",
            "ASSAY_DATA_DIR": f"{tmp}/data",
        }
        assay(["migrate"], env, Path(tmp) / "migrate.log", ROOT).wait()
        processes = []
        for i in (1, 2):
            processes.append(
                assay(
                    ["worker", "--concurrency", "1", "--no-reaper"],
                    env,
                    Path(tmp) / f"worker{i}.log",
                    ROOT,
                    new_session=True,
                )
            )
            # Each beat keeps its own schedule file.
            beat_env = {**env, "ASSAY_DATA_DIR": f"{tmp}/beat{i}"}
            processes.append(assay(["beat"], beat_env, Path(tmp) / f"beat{i}.log", ROOT))
        try:
            time.sleep(10)  # both beats and workers up
            schedule_id, start = create_schedule(env)
            time.sleep(args.seconds + 3)
        finally:
            stop_processes(processes)
        window_end = start + timedelta(seconds=args.seconds)
        with psycopg.connect(postgres_dsn(url.rsplit("/", 1)[1])) as connection:
            rows, distinct = connection.execute(
                "SELECT count(*), count(DISTINCT due_at) FROM schedule_runs "
                "WHERE schedule_id = %s AND due_at > %s AND due_at <= %s",
                (schedule_id, start, window_end),
            ).fetchone() or (0, 0)
    print(f"due times in the window: {args.seconds}; runs: {rows}; distinct due times: {distinct}")
    sys.exit(0 if rows == distinct == args.seconds else 1)


def create_schedule(env: dict[str, str]) -> tuple[str, datetime]:
    """A 1-second schedule of the default owner; returns its id and creation time."""
    os.environ.update(env)
    from main import bootstrap
    from schemas.settings import Settings
    from use_cases.schedules import create_schedule as create

    context = bootstrap(Settings())
    uow = context.new_uow()
    now = datetime.now(UTC)
    dataset = Dataset(
        id=new_id(),
        owner_id="default",
        name="bench",
        format=DatasetFormat.csv,
        status=DatasetStatus.uploaded,
        size_bytes=1,
        sha256="a" * 64,
        storage_key="k",
        created_at=now,
        updated_at=now,
    )
    with uow:
        uow.datasets.add(dataset)
        uow.commit()
    schedule = create(
        uow,
        Principal(owner_id="default", scope=KeyScope.write),
        name="every second",
        cron=None,
        interval_seconds=1,
        timezone="UTC",
        enabled=True,
        action=ScheduleAction(dataset_id=dataset.id, steps=[{"processor": "metrics"}]),
        now=now,
    )
    return str(schedule.id), now


if __name__ == "__main__":
    main()
