"""The reaper: periodic recovery run inside worker processes (and `serve`), no beat needed."""

import logging
import threading
from collections.abc import Callable

from ports.context import Context
from use_cases.datasets import recover_stuck_datasets
from use_cases.jobs import recover_jobs

log = logging.getLogger(__name__)


def reap_once(context: Context) -> int:
    """One pass of every recovery rule; returns how many records it acted on."""
    settings = context.settings
    datasets = recover_stuck_datasets(
        context.new_uow(),
        context.queue,
        grace_s=settings.reaper_grace_s,
        validating_timeout_s=settings.task_hard_time_limit_s + settings.reaper_grace_s,
    )
    jobs = recover_jobs(
        context.new_uow(),
        context.queue,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        grace_s=settings.reaper_grace_s,
        max_attempts=settings.job_max_attempts,
    )
    return datasets + jobs


def start_reaper_thread(context_factory: Callable[[], Context]) -> threading.Event:
    """Run reap_once every reaper_interval_s in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        context = context_factory()
        while not stop.wait(context.settings.reaper_interval_s):
            try:
                acted = reap_once(context)
                if acted:
                    log.info("reaper acted on %d record(s)", acted)
            except Exception:  # keep the loop alive across transient outages
                log.exception("reaper pass failed")

    threading.Thread(target=loop, name="assay-reaper", daemon=True).start()
    return stop
