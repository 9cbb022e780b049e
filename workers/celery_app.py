"""Celery application factory; the app is built by the composition root, never at import."""

import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from types import FrameType, MappingProxyType

from billiard.process import active_children
from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready
from celery.worker import state as worker_state
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


log = logging.getLogger(__name__)

# What a task is working on (job_id, attempt, owner, dataset_id, request_id), for its log lines.
_log_fields: ContextVar[Mapping[str, object]] = ContextVar(
    "worker_log_fields", default=MappingProxyType({})
)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add fields (None ones are left out) to every log line written inside the block."""
    added = {key: value for key, value in fields.items() if value is not None}
    token = _log_fields.set(MappingProxyType({**_log_fields.get(), **added}))
    try:
        yield
    finally:
        _log_fields.reset(token)


class JobLogContext(logging.Filter):
    """Puts the fields of log_context() on every record (its own `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _log_fields.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# Connected before _load_the_engine, so it runs first: the signal is blocked before any import
# starts a thread, and every later thread inherits the mask.
@worker_process_init.connect
def _take_sigterm_from_the_parent_only(**_: object) -> None:
    """Let only the worker's main process stop a pool process with SIGTERM.

    SIGTERM to the whole process group (`kill -TERM -<pgid>`) or control group (systemd) also
    reaches the pool processes, which would die mid-task while the main process waits, in its
    warm shutdown, for their tasks to end. Here SIGTERM is blocked in every thread (forked job
    processes inherit the mask too) and one thread takes it: sent by the main process (billiard
    ends its pool that way in a cold shutdown), it ends this process as before; sent by anyone
    else, it is logged and dropped.
    """
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: Celery's own behaviour
        return
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_wait_for_sigterm, args=(parent,), name="assay-sigterm", daemon=True
    ).start()


def _wait_for_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            # Unblocked in this thread only: the default action (exit) happens here, at once.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.info(
            "pool process %d: SIGTERM from pid %d ignored; the worker's main process stops it "
            "once its task is done",
            os.getpid(),
            info.si_pid,
        )


@worker_ready.connect
def _stop_at_once_when_idle(**_: object) -> None:
    """SIGTERM to an idle worker ends it at once; with a task reserved or running, Celery's warm
    shutdown runs as before and lets it finish.

    The warm shutdown of an idle worker takes 2 s on Redis and up to 6 s on the filesystem
    transport, all of it in Celery's and billiard's polling sleeps. Idle, there is nothing to
    finish or hand back: no message is reserved, so none is left unacknowledged.
    """
    celery_handler = signal.getsignal(signal.SIGTERM)
    if not callable(celery_handler) or getattr(celery_handler, "assay_idle_stop", False):
        return  # not Celery's handler, or already wrapped (the consumer restarted)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if not worker_state.requests:
            _exit_idle()
        celery_handler(signum, frame)

    on_sigterm.assay_idle_stop = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


def _exit_idle() -> None:
    # Idle pool processes hold no task, so nothing is lost by killing them; SIGTERM could reach
    # one that is still starting, before it takes the signal, and leave it running.
    children = active_children()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
    for child in children:
        child.join(timeout=1)
    log.info("worker: idle, stopped at once")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@worker_process_init.connect
def _load_the_engine(**_: object) -> None:
    """Import DuckDB, pyarrow and the processors in each pool process before its first task.

    The worker's main process only consumes messages and runs the reaper, so it never loads
    them: forked pool processes do not inherit ~75 MiB they would share with it.
    """
    import services.processing.datasets.ingest  # noqa: F401
    import use_cases.run_job  # noqa: F401

    preload_fitting_libraries()


# What the isolated fits import: seconds on a cold process, paid again by every job's child if
# the pool process that forks it lacks them. The API process never imports these.
FITTING_MODULES = (
    "scipy.optimize",
    "scipy.stats",
    "sklearn.decomposition",
    "statsmodels.discrete.discrete_model",
    "statsmodels.genmod.generalized_linear_model",
    "stepmix.stepmix",
    "prince",
)
_preloads: list[threading.Thread] = []


def preload_fitting_libraries() -> threading.Thread:
    """Import FITTING_MODULES in a background thread of this (pool) process, so that the
    child forked for a fit starts with them loaded; a fork waits until the imports are done.

    A thread, not the init hook itself: the pool process reports up and takes jobs at once
    (importing them all took 10 to 32 s on a busy 2-core machine, against the 30 s
    `worker_proc_alive_timeout`).
    """
    if not _preloads:
        # A fork in the middle of an import would give the child half-made modules and import
        # locks held by a thread it does not have.
        os.register_at_fork(before=_wait_for_preloads)
    thread = threading.Thread(target=_import_fitting_modules, name="preload-fits", daemon=True)
    _preloads.append(thread)
    thread.start()
    return thread


def _import_fitting_modules() -> None:
    for name in FITTING_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the fit imports it again and reports what is wrong in its job
            log.warning("preloading %s failed", name, exc_info=True)


def _wait_for_preloads() -> None:
    for thread in _preloads:
        if thread is not threading.current_thread() and thread.is_alive():
            thread.join()


@cache
def _context_for_process(factory: Callable[[], Context], pid: int) -> Context:
    # Keyed by pid: a forked child must never reuse its parent's connections.
    return factory()


# A broker that vanishes without closing its connections (a partition, a NAT or proxy that drops
# one side) must cost a consumer seconds, not its queue forever: a connection silent for
# BROKER_KEEPALIVE_IDLE_S is probed and dropped after BROKER_KEEPALIVE_COUNT unanswered probes,
# about 25 s (10 + 3 x 5) in all; a live broker answers the probes however idle the queue is.
BROKER_CONNECT_TIMEOUT_S = 3
BROKER_SOCKET_TIMEOUT_S = 10
BROKER_KEEPALIVE_IDLE_S = 10
BROKER_KEEPALIVE_INTERVAL_S = 5
BROKER_KEEPALIVE_COUNT = 3
BROKER_HEALTH_CHECK_S = 10


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
        return url, {
            # Above the hard limit, so a long task is never redelivered while it still runs.
            "visibility_timeout": hard_limit + 600,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            # A command (a publish) on a dead connection fails instead of waiting forever.
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
            "socket_keepalive": True,
            "socket_keepalive_options": broker_keepalive_options(),
            # redis-py pings a connection idle this long before using it, and kombu drops a
            # consumer's BRPOP whose reply is this much overdue: a half-open consumer
            # connection is replaced within about 1 + 2 x 10 s.
            "health_check_interval": BROKER_HEALTH_CHECK_S,
        }
    # RabbitMQ: py-amqp's own keepalives give up only after 60 + 9 x 10 s.
    return url, {
        "connect_timeout": BROKER_CONNECT_TIMEOUT_S,
        "socket_settings": broker_keepalive_options(),
    }


def broker_keepalive_options() -> dict[int, int]:
    """TCP keepalive options (Linux names) for broker connections; empty where not known."""
    names = {
        "TCP_KEEPIDLE": BROKER_KEEPALIVE_IDLE_S,
        "TCP_KEEPINTVL": BROKER_KEEPALIVE_INTERVAL_S,
        "TCP_KEEPCNT": BROKER_KEEPALIVE_COUNT,
    }
    return {getattr(socket, name): value for name, value in names.items() if hasattr(socket, name)}


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
