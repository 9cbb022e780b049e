"""The reaper: periodic recovery run inside worker processes (and `serve`), no beat needed."""

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ports.context import Context
from use_cases import retention
from use_cases.datasets import recover_stuck_datasets
from use_cases.exports import recover_exports
from use_cases.jobs import recover_jobs
from use_cases.scratch import owner, this_host

log = logging.getLogger(__name__)

VALIDATION_SILENCE_S = 300.0

# Set by the worker's consumer when its broker connection came back: the next recovery pass
# runs at once and publishes queued jobs again without waiting for their grace period.
broker_back = threading.Event()
# Queued jobs this old are published again after a reconnect (younger ones were sent after it).
REPUBLISH_AFTER_RECONNECT_S = 1.0


def reap_once(context: Context, *, queued_grace_s: float | None = None) -> int:
    """One pass of every recovery rule; returns how many records it acted on."""
    settings = context.settings
    grace_s = settings.reaper_grace_s if queued_grace_s is None else queued_grace_s
    datasets = recover_stuck_datasets(
        context.new_uow(),
        context.queue,
        grace_s=grace_s,
        # Validations refresh updated_at every few seconds: minutes of silence mean a dead worker.
        validating_timeout_s=VALIDATION_SILENCE_S,
    )
    jobs = recover_jobs(
        context.new_uow(),
        context.queue,
        context.results_storage,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        grace_s=grace_s,
        max_attempts=settings.job_max_attempts,
    )
    # Imported here: prometheus_client must load after the CLI chose its metrics folder.
    from workers.metrics import REAPER_ACTIONS

    exports = recover_exports(
        context.new_uow(),
        context.queue,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        grace_s=grace_s,
        max_attempts=settings.job_max_attempts,
    )
    jobs += exports  # counted with the jobs: the same engine
    REAPER_ACTIONS.labels("datasets").inc(datasets)
    REAPER_ACTIONS.labels("jobs").inc(jobs)
    retained = sweep_retention(context)
    REAPER_ACTIONS.labels("retention").inc(retained)
    return datasets + jobs + retained


# The retention sweep runs at most this often per process: its listings scan more than the
# recovery rules, and a day-scale policy does not need seconds.
RETENTION_EVERY_S = 60.0
_retention_due = 0.0


def sweep_retention(context: Context) -> int:
    """A bounded retention pass (use_cases/retention.py) when one is due; records it deleted.

    Its failure is logged, never raised: recovery must go on.
    """
    global _retention_due
    now = time.monotonic()
    if now < _retention_due:
        return 0
    _retention_due = now + RETENTION_EVERY_S
    try:
        return retention.sweep(
            context.new_uow(),
            context.datasets_storage,
            context.results_storage,
            retention.RetentionPolicy.from_settings(context.settings),
            datetime.now(UTC),
        )
    except Exception:
        log.warning("retention sweep failed", exc_info=True)
        return 0


# Touched after every recovery pass: its age tells a health check the worker's loop runs.
ALIVE_FILE = "worker-alive"


def start_reaper_thread(context_factory: Callable[[], Context]) -> threading.Event:
    """Run reap_once every reaper_interval_s in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        context = context_factory()
        settings = context.settings
        alive = settings.data_dir / ALIVE_FILE
        first = True  # a worker (re)started is when recovery matters most: no wait
        while not stop.is_set():
            reconnected = not first and broker_back.wait(settings.reaper_interval_s)
            first = False
            broker_back.clear()
            grace = REPUBLISH_AFTER_RECONNECT_S if reconnected else None
            try:
                acted = reap_once(context, queued_grace_s=grace)
                if acted:
                    log.info("reaper acted on %d record(s)", acted)
            except Exception:  # keep the loop alive across transient outages
                log.exception("reaper pass failed")
            try:  # scratch of attempts whose process died (a hard time limit, the OOM killer)
                swept = sweep_scratch(
                    settings.tmp_dir, older_than_s=settings.task_hard_time_limit_s
                )
                if swept:
                    log.info("removed %d scratch folder(s) of dead processes", swept)
            except OSError:
                log.warning("scratch sweep failed", exc_info=True)
            with contextlib.suppress(OSError):  # what a container health check looks at
                alive.touch()

    threading.Thread(target=loop, name="assay-reaper", daemon=True).start()
    return stop


def sweep_scratch(folder: Path, older_than_s: float) -> int:
    """Remove scratch folders a killed worker left behind: those of a process of this host
    that no longer runs (a job attempt's, named for its pool process), and any older than a
    task may run."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    host = this_host()
    removed = 0
    for entry in folder.iterdir():
        try:
            stale = entry.name.startswith(("job-", "validate-")) and entry.stat().st_mtime < cutoff
        except FileNotFoundError:  # removed meanwhile (its attempt ended)
            continue
        # A job attempt's scratch (job-<id>-...@<pid>@<host>) whose process died: the host's
        # name keeps a worker of another container, sharing the folder, out of it.
        owned = owner(entry.name)
        dead_owner = owned is not None and owned[1] == host and not _alive(owned[0])
        # DuckDB's spill folder of a worker process (duckdb-<pid>) that no longer runs. Workers
        # in other PID namespaces (containers) need their own ASSAY_DATA_DIR/tmp for this.
        spill_pid = entry.name.removeprefix("duckdb-")
        if stale or dead_owner or (spill_pid.isdigit() and not _alive(int(spill_pid))):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
