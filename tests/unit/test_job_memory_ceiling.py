"""The memory ceiling of a job: a job that is not provably small runs in a child process,
killed above the budget or on a cancel; memory failures are final, not retried."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psutil
import pytest

from schemas.domain.records import JobStatus, JobStep
from services.processing import sandbox
from services.processing.processors.base import (
    ComputeLimits,
    MemoryBudgetExceeded,
    Processor,
    ProcessorInputError,
    StepInput,
    StepOutput,
)
from services.processing.processors.registry import PROCESSORS
from tests.unit.test_job_use_cases import ME, add_dataset, types
from use_cases import run_job as run_job_module
from use_cases.jobs import recover_jobs, submit_job
from use_cases.run_job import EngineSettings, Outcome, run_job
from workers.errors import is_transient
from workers.reaper import sweep_scratch

MIB = 1024**2
STEPS = [
    JobStep(processor="metrics"),
    JobStep(processor="anomalies", params={"method": "iqr"}),
    JobStep(processor="normalize", params={"output_format": "csv"}),
]


@pytest.fixture
def world(tmp_path: Path):
    from tests.fakes import FakeQueue, FakeStorage, FakeUnitOfWork

    uow, datasets, results, queue = FakeUnitOfWork(), FakeStorage(), FakeStorage(), FakeQueue()
    parquet = tmp_path / "data.parquet"
    duckdb.sql(
        "COPY (SELECT CASE WHEN i % 97 = 0 THEN i * 50.0 ELSE i::DOUBLE END AS x,"
        f" (i % 3)::VARCHAR AS g FROM range(1000) t(i)) TO '{parquet}' (FORMAT parquet)"
    )
    return uow, datasets, results, queue, parquet


def engine(budget: int | None = 256, *, isolate: bool = True) -> EngineSettings:
    """A budget; `isolate`: every job in a child process (none is small enough)."""
    return EngineSettings(
        heartbeat_interval_s=0.05,
        max_attempts=3,
        memory_budget_mb=budget,
        in_process_bytes=0 if isolate else 1 << 40,
    )


def run(world, job_id, tmp_path: Path, settings: EngineSettings, **kwargs: Any) -> Outcome:
    uow, datasets, results, _, _ = world
    return run_job(
        lambda: uow,
        datasets,
        results,
        job_id,
        worker_id="w1",
        workdir=tmp_path / "work",
        engine=settings,
        compute=kwargs.get("compute", ComputeLimits(threads=2)),
        # Everything "transient": a memory failure must still not be retried.
        is_transient=kwargs.get("is_transient", lambda exc: True),
    )


def submit(world, steps=STEPS):
    uow, datasets, _, queue, parquet = world
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(uow, queue, principal=ME, dataset_id=dataset.id, steps=steps)
    return job


@pytest.fixture
def fake_metrics(monkeypatch: pytest.MonkeyPatch):
    """Replace what the `metrics` step runs with a function of the StepInput."""

    def install(work, *, isolated: bool = False) -> None:
        real = PROCESSORS["metrics"]

        def fake(step: StepInput, params: Any) -> StepOutput:
            work(step)
            return StepOutput(summary={"ok": True}, artifacts=[])

        processor = Processor(
            name=real.name,
            description=real.description,
            params_model=real.params_model,
            artifacts=[],
            run=fake,
            check_columns=real.check_columns,
            isolated=isolated,
        )
        monkeypatch.setattr(run_job_module, "get_processor", lambda name: processor)

    return install


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[sandbox.Child]:
    """The child processes the engine starts."""
    started: list[sandbox.Child] = []
    real = run_job_module.Child

    def spy(*args: Any, **kwargs: Any) -> sandbox.Child:
        child = real(*args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(run_job_module, "Child", spy)
    return started


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_job_in_a_child_process_gives_what_it_gives_in_process(world, tmp_path, children):
    uow = world[0]
    inside, outside = submit(world), submit(world)
    assert run(world, inside.id, tmp_path, engine(isolate=False)) == Outcome.completed
    assert children == []  # provably small: no child process
    assert run(world, outside.id, tmp_path, engine(isolate=True)) == Outcome.completed
    assert len(children) == 1 and gone(children[0].pid)
    a, b = uow.jobs.get(inside.id, ME), uow.jobs.get(outside.id, ME)
    assert a.result == b.result and b.progress == 1.0
    hashes = [{x.name: x.sha256 for x in uow.artifacts.list_for_job(ME, j.id)} for j in (a, b)]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 2
    history = [t for t in types(uow, outside.id) if t != "progress"]
    assert history == [
        "created",
        "enqueued",
        "started",
        *["step_started", "step_completed"] * 3,
        "completed",
    ]
    assert "progress" in types(uow, outside.id)  # the child's progress reached the heartbeat
    assert not list((tmp_path / "work").iterdir())  # scratch and DuckDB's spill folder removed


def final_memory_failure(world, job_id, budget: int) -> dict[str, Any]:
    """The job failed once for memory, and the recovery loop leaves it failed."""
    uow, _, results, queue, _ = world
    job = uow.jobs.get(job_id, ME)
    assert (job.status, job.attempts) == (JobStatus.failed, 1)
    assert job.error["type"] == "MemoryBudgetExceeded"
    assert job.error["message"].startswith(f"exceeded the memory budget ({budget} MiB)")
    assert "retried" not in types(uow, job_id)
    recover_jobs(uow, queue, results, heartbeat_timeout_s=0, grace_s=0, max_attempts=3)
    assert uow.jobs.get(job_id, ME).status == JobStatus.failed
    error: dict[str, Any] = job.error
    return error


def test_a_child_that_outgrows_the_budget_is_killed_and_the_job_fails_for_good(
    world, tmp_path, fake_metrics, children, monkeypatch
):
    def grow(step: StepInput) -> None:
        held = []
        for _ in range(256):  # up to 4 GiB, 16 MiB at a time, every page touched
            held.append(np.ones(2 * MIB))
            time.sleep(0.002)

    fake_metrics(grow)
    monkeypatch.setattr(sandbox, "ADDRESS_SPACE_PER_BUDGET", 64)  # the watcher, not RLIMIT
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(128)) == Outcome.failed
    final_memory_failure(world, job.id, 128)
    [child] = children
    assert 128 * MIB < child.peak_bytes < 1024 * MIB  # stopped soon after the budget
    assert gone(child.pid)


def test_one_huge_allocation_fails_at_once_under_the_address_space_limit(
    world, tmp_path, fake_metrics
):
    # Never touched, so only the address space limit can refuse it (RAM would allow it).
    fake_metrics(lambda step: np.empty(4 * 1024 * MIB, dtype=np.uint8))
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(128)) == Outcome.failed
    error = final_memory_failure(world, job.id, 128)
    assert "Unable to allocate" in error["message"] and error["processor"] == "metrics"


@pytest.mark.parametrize("isolate", [True, False], ids=["child", "in-process"])
def test_duckdb_out_of_memory_is_a_memory_failure(world, tmp_path, fake_metrics, isolate):
    def exhaust(step: StepInput) -> None:
        raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate 16.0 MiB")

    fake_metrics(exhaust)
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(256, isolate=isolate)) == Outcome.failed
    error = final_memory_failure(world, job.id, 256)
    assert error["message"].endswith("Out of Memory Error: failed to allocate 16.0 MiB")
    assert not is_transient(MemoryBudgetExceeded(256))


def test_in_process_the_monitor_fails_a_job_that_grows_over_the_budget(
    world, tmp_path, fake_metrics
):
    def grow_then_report(step: StepInput) -> None:
        held = np.ones(64 * MIB // 8)  # noqa: F841 - held while the heartbeats look
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            step.report(0.5, "busy")  # raises once a heartbeat saw the growth
            time.sleep(0.01)

    fake_metrics(grow_then_report)
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(16, isolate=False)) == Outcome.failed
    final_memory_failure(world, job.id, 16)


def test_a_cancel_kills_a_child_busy_in_one_long_call(world, tmp_path, fake_metrics, children):
    uow = world[0]
    fake_metrics(lambda step: time.sleep(60))  # no progress reports: only a kill stops it
    job = submit(world, [JobStep(processor="metrics")])

    def cancel_soon() -> None:
        while not children or not types(uow, job.id).count("step_started"):
            time.sleep(0.01)
        time.sleep(0.3)
        cancelled_at.append(time.monotonic())
        uow.jobs.request_cancel(job.id)

    import threading

    cancelled_at: list[float] = []
    threading.Thread(target=cancel_soon, daemon=True).start()
    assert run(world, job.id, tmp_path, engine()) == Outcome.cancelled
    assert time.monotonic() - cancelled_at[0] < 2.0
    assert uow.jobs.get(job.id, ME).status == JobStatus.cancelled
    assert gone(children[0].pid)
    assert not list((tmp_path / "work").iterdir())


def test_errors_of_the_child_keep_their_kind_and_details(world, tmp_path, fake_metrics):
    uow = world[0]

    def bad_value(step: StepInput) -> None:
        raise ProcessorInputError("cannot cast 'x'", column="x", row=7)

    fake_metrics(bad_value)
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(), is_transient=lambda e: False) == Outcome.failed
    error = uow.jobs.get(job.id, ME).error
    assert error | {"message": ""} == {
        "step": 0,
        "processor": "metrics",
        "type": "ProcessorInputError",
        "message": "",
        "column": "x",
        "row": 7,
    }

    class Unpicklable(Exception):
        def __init__(self, lock: Any) -> None:
            super().__init__("odd")
            self.lock = lock

    def odd(step: StepInput) -> None:
        import threading

        raise Unpicklable(threading.Lock())

    fake_metrics(odd)
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(), is_transient=lambda e: False) == Outcome.failed
    assert uow.jobs.get(job.id, ME).error["type"] == "Unpicklable"


def test_a_child_that_dies_without_a_result_fails_the_job(world, tmp_path, fake_metrics):
    uow = world[0]
    fake_metrics(lambda step: os._exit(3))
    job = submit(world, [JobStep(processor="metrics")])
    assert run(world, job.id, tmp_path, engine(), is_transient=lambda e: False) == Outcome.failed
    error = uow.jobs.get(job.id, ME).error
    assert (error["type"], error["message"]) == (
        "ChildCrashed",
        "the job's process exited with code 3 without a result",
    )


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dataclasses import replace
    from pathlib import Path
    import duckdb
    from schemas.domain.records import JobStep
    from services.processing.processors.base import ComputeLimits
    from tests.fakes import FakeQueue, FakeStorage, FakeUnitOfWork
    from tests.unit.test_job_use_cases import ME, add_dataset
    from use_cases import run_job as module
    from use_cases.jobs import submit_job
    from use_cases.run_job import EngineSettings, run_job

    tmp = Path(sys.argv[1])
    uow, datasets, results, queue = FakeUnitOfWork(), FakeStorage(), FakeStorage(), FakeQueue()
    parquet = tmp / "data.parquet"
    duckdb.sql(f"COPY (SELECT range AS x FROM range(1000)) TO '{parquet}' (FORMAT parquet)")
    dataset = add_dataset(uow, datasets, parquet)
    job, _ = submit_job(
        uow, queue, principal=ME, dataset_id=dataset.id, steps=[JobStep(processor="metrics")]
    )
    slow = replace(module.get_processor("metrics"), run=lambda step, params: time.sleep(600))
    module.get_processor = lambda name: slow
    run_job(
        lambda: uow, datasets, results, job.id, worker_id="w", workdir=tmp / "work",
        engine=EngineSettings(heartbeat_interval_s=0.05, memory_budget_mb=256, in_process_bytes=0),
        compute=ComputeLimits(threads=2), is_transient=lambda exc: False,
    )
    """
)


def test_a_worker_killed_hard_leaves_no_process_and_its_scratch_is_swept(tmp_path):
    worker = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 60
        while not psutil.Process(worker.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = psutil.Process(worker.pid).children()
        scratch = [p for p in (tmp_path / "work").iterdir() if p.name.startswith("job-")]
        assert len(scratch) == 1
        worker.send_signal(signal.SIGKILL)  # a hard time limit, the kernel's OOM killer
        worker.wait()
        deadline = time.monotonic() + 5
        while not gone(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child.pid)  # it dies with its parent (PR_SET_PDEATHSIG)
        assert sweep_scratch(tmp_path / "work", older_than_s=3600) == 1
        assert not scratch[0].exists()
    finally:
        worker.kill()
        worker.wait()
