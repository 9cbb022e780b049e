"""Long model fits: progress carries an ETA, and a cancel stops a fit inside a library call."""

import threading
import time
from pathlib import Path

from schemas.domain.records import JobStatus, JobStep
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
from tests.unit.test_job_use_cases import ME, types
from use_cases.job_monitor import eta_seconds
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
