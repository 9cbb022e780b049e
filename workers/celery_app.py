"""Celery application factory; the app is built by the composition root, never at import."""

import os
from collections.abc import Callable
from functools import cache

from celery import Celery, Task
from celery.signals import worker_process_init
from kombu import Queue

from ports.context import Context
from schemas.settings import Settings


class AssayCelery(Celery):
    """A Celery app that carries the factory of the ports its tasks run with."""

    context_factory: Callable[[], Context]

    def context(self) -> Context:
        # Built lazily in each worker process, after prefork, so no connection crosses a fork.
        return _context_for_process(self.context_factory, os.getpid())


def context_of(task: Task) -> Context:
    """The ports a task runs with, from the app the composition root built."""
    app = task.app
    assert isinstance(app, AssayCelery), "tasks run only in the app make_celery() built"
    return app.context()


@worker_process_init.connect
def _load_the_engine(**_: object) -> None:
    """Import DuckDB, pyarrow and the processors in each pool process before its first task.

    The worker's main process only consumes messages and runs the reaper, so it never loads
    them: forked pool processes do not inherit ~75 MiB they would share with it.
    """
    import services.processing.datasets.ingest  # noqa: F401
    import use_cases.run_job  # noqa: F401


@cache
def _context_for_process(factory: Callable[[], Context], pid: int) -> Context:
    # Keyed by pid: a forked child must never reuse its parent's connections.
    return factory()


def broker_options(settings: Settings) -> tuple[str, dict[str, object]]:
    """Broker URL and transport options for the configured broker."""
    url = settings.resolved_broker_url
    hard_limit = settings.task_hard_time_limit_s
    if url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return url, {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    if url.startswith(("redis", "rediss")):
        # Above the hard limit, so a long task is never redelivered while it still runs.
        return url, {
            "visibility_timeout": hard_limit + 600,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        }
    return url, {"connect_timeout": 3}


def make_celery(settings: Settings, context_factory: Callable[[], Context]) -> AssayCelery:
    """The Celery app for the API (publishing) and the workers (consuming)."""
    url, transport_options = broker_options(settings)
    app = AssayCelery("assay", broker=url, include=["workers.tasks"], set_as_current=True)
    if url.startswith("filesystem"):
        app.conf.broker_transport = "workers.fs_transport:Transport"
    app.context_factory = context_factory
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_default_queue=settings.queue_name,
        task_queues=[Queue(settings.queue_name)],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A pool process imports DuckDB and the processors before reporting up (4 s default).
        worker_proc_alive_timeout=30,
        task_ignore_result=True,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_hard_time_limit_s,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        # Flower follows tasks through the worker's events (received, started, succeeded). A
        # `task-sent` event would cost every submit a second Redis publish in the request.
        worker_send_task_events=True,
        # Reconnects within a second or two and has queued jobs published again when it did.
        worker_consumer="workers.consumer:Consumer",
        task_send_sent_event=False,
        broker_heartbeat=30,
    )
    return app
