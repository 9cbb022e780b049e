"""Long model fits: progress carries an ETA, and a cancel stops a fit inside a library call."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.domain.records import ColumnInfo, JobStatus, JobStep
from services.processing.processors.base import StepInput
from tests.unit.test_job_memory_ceiling import (  # noqa: F401
    children,
    engine,
    fake_metrics,
    gone,
    run,
    submit,
    world,
)
from tests.unit.test_job_use_cases import ME, add_dataset, types
from use_cases.job_monitor import eta_seconds
from use_cases.jobs import submit_job
from use_cases.run_job import Outcome


def test_eta_is_the_time_left_at_the_average_rate_once_it_means_something() -> None:
    assert eta_seconds(0.25, 10.0) == 30.0
    assert eta_seconds(0.01, 10.0) is None  # too little progress to tell
    assert eta_seconds(0.5, 0.2) is None  # too early
    assert eta_seconds(1.0, 10.0) is None


def test_progress_events_carry_an_eta(world, tmp_path: Path, fake_metrics) -> None:  # noqa: F811
    def steady(step: StepInput) -> None:
        for i in range(1, 31):
            time.sleep(0.1)
            step.report(i / 30, f"{i}/30")

    fake_metrics(steady)
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(None)) == Outcome.completed

    uow = world[0]
    progress = [e for e in uow.job_events.list_for_job(ME, job.id) if e.type == "progress"]
    etas = [e.payload.get("eta_seconds") for e in progress]
    assert any(eta is not None for eta in etas)
    assert all(eta is None or 0 <= eta < 10 for eta in etas)


def test_a_cancel_stops_an_isolated_fit_inside_a_library_call_within_two_seconds(
    world,  # noqa: F811
    tmp_path: Path,
    fake_metrics,  # noqa: F811
    children,  # noqa: F811
) -> None:
    def library_call(step: StepInput) -> None:
        time.sleep(60)  # never reports: a fit inside its own loop

    fake_metrics(library_call, isolated=True)
    job = submit(world, [JobStep(processor="metrics")])
    uow = world[0]
    asked: list[float] = []

    def cancel_soon() -> None:
        time.sleep(1.0)
        asked.append(time.monotonic())
        uow.jobs.request_cancel(job.id)

    threading.Thread(target=cancel_soon, daemon=True).start()
    # Small data that would run in-process: the isolated processor runs in a child anyway.
    outcome = run(world, job.id, tmp_path, engine(256, isolate=False))
    stopped = time.monotonic()

    assert outcome == Outcome.cancelled
    assert stopped - asked[0] < 2.0
    assert uow.jobs.get(job.id, ME).status == JobStatus.cancelled
    [child] = children
    assert gone(child.pid)
    assert types(uow, job.id)[-1] == "cancelled"


def planted_items(path: Path, rows: int, items: int = 20, classes: int = 4, seed: int = 0) -> None:
    """Binary items (0/1 int8) of `rows` respondents from `classes` planted latent classes."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.1, 0.9, size=(classes, items))
    labels = rng.integers(0, classes, rows)
    values = (rng.random((rows, items), dtype=np.float32) < probabilities[labels]).astype(np.int8)
    pq.write_table(pa.table({f"item_{j}": values[:, j] for j in range(items)}), path)


@pytest.mark.slow
def test_a_cancel_stops_latent_classes_on_a_million_rows_mid_fit_within_two_seconds(
    world,  # noqa: F811
    tmp_path: Path,
    children,  # noqa: F811
) -> None:
    uow, datasets, results, queue, _ = world
    parquet = tmp_path / "items.parquet"
    planted_items(parquet, rows=1_000_000)
    columns = [ColumnInfo(name=f"item_{j}", type="integer", null_count=0) for j in range(20)]
    dataset = add_dataset(uow, datasets, parquet)
    uow.datasets.add(dataset.model_copy(update={"columns": columns, "row_count": 1_000_000}))
    step = JobStep(
        processor="latent_classes",
        params={"columns": [c.name for c in columns], "n_classes": 4, "n_init": 10},
    )
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=[step])
    asked: list[float] = []
    seen: list[str] = []

    def cancel_mid_fit() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = uow.jobs.get(job.id, ME)
            if current.message and "classes: start" in current.message:
                seen.append(current.message)
                time.sleep(0.5)  # well inside the EM loop of the first start
                asked.append(time.monotonic())
                uow.jobs.request_cancel(job.id)
                return
            time.sleep(0.02)

    threading.Thread(target=cancel_mid_fit, daemon=True).start()
    # The worker's side as deployed: the step in a child, under the budget's memory ceiling.
    outcome = run(world, job.id, tmp_path, engine(1024))  # the default budget
    stopped = time.monotonic()
    print(f"cancel -> cancelled in {stopped - asked[0]:.2f} s, during {seen[0]!r}")

    assert seen, "the fit never started"
    assert outcome == Outcome.cancelled
    assert stopped - asked[0] < 2.0
    assert uow.jobs.get(job.id, ME).status == JobStatus.cancelled
    assert types(uow, job.id)[-1] == "cancelled"
    assert "step_completed" not in types(uow, job.id)
    [child] = children
    assert gone(child.pid)
    # Nothing it wrote survives: no artifact record, no stored file, no scratch.
    assert uow.artifacts.list_for_job(ME, job.id) == []
    assert results.objects == {}
    assert not list((tmp_path / "work").iterdir())


PRELOAD_CHECK = """
import os, sys, time
from workers import celery_app

thread = celery_app.preload_fitting_libraries()
pid = os.fork()  # at once: the fork waits for the imports
if pid == 0:
    os._exit(0 if all(name in sys.modules for name in celery_app.FITTING_MODULES) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), thread.is_alive())
"""


@pytest.mark.slow
def test_a_pool_process_preloads_the_fitting_libraries_for_the_children_it_forks() -> None:
    # A fresh interpreter: this one may have imported the libraries already.
    done = subprocess.run(
        [sys.executable, "-c", PRELOAD_CHECK], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]  # the child had them all, the thread was done
