"""Composition root: settings -> adapters -> FastAPI app, Celery app and the `assay` CLI."""

import atexit
import contextlib
import ctypes
import errno
import gc
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from rich.console import Console
from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine, make_url

from client.cli import datasets_cli, jobs_cli
from db.engine import make_engine
from db.models import ArtifactRow, DatasetRow, JobRow
from ports.context import Context
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from ports.wakeups import JobWakeups
from repositories.jobs import JOB_EVENTS_CHANNEL
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import JobStatus, KeyScope
from schemas.settings import Settings
from services.adapters.http_fetcher import HttpUrlFetcher
from services.adapters.storage.local import LocalObjectStorage
from services.adapters.wakeups.polling import PollingJobWakeups
from services.adapters.wakeups.postgres import PostgresJobWakeups
from services.adapters.wakeups.sqlite_file import SqliteFileWakeups
from services.adapters.webhook_sender import HttpWebhookSender
from use_cases.errors import UseCaseError
from workers.celery_app import AssayCelery, JobLogContext, make_celery
from workers.celery_queue import CeleryTaskQueue
from workers.reaper import start_reaper_thread, sweep_scratch
from workers.webhook_relay import start_webhook_relay_thread

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from api.metrics import DatabaseStats
    from ports.exports import TableLoader

console = Console()
cli = typer.Typer(help="Assay: asynchronous dataset processing.", no_args_is_help=True)


def make_storage(settings: Settings, bucket: str) -> ObjectStorage:
    """One bucket of the configured object storage."""
    if settings.storage_backend == "s3":
        # Imported where used (so are alembic and uvicorn): a worker's processes stay smaller.
        from services.adapters.storage.s3 import S3ObjectStorage

        return S3ObjectStorage(
            bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            region=settings.s3_region,
            # A custom endpoint without a public one is private: downloads go through the API.
            presign_downloads=bool(settings.s3_public_endpoint_url) or not settings.s3_endpoint_url,
        )
    return LocalObjectStorage(settings.objects_dir / bucket)


def build_celery(settings: Settings) -> AssayCelery:
    """The Celery app; its tasks get their ports from bootstrap() in each worker process."""
    app: AssayCelery = make_celery(settings, context_factory=lambda: bootstrap(settings, app))
    return app


def bootstrap(
    settings: Settings, celery_app: AssayCelery | None = None, engine: Engine | None = None
) -> Context:
    """Choose the adapters for the settings and wire them into a Context."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = engine or make_engine(settings.resolved_database_url)
    return Context(
        settings=settings,
        new_uow=lambda: SqlUnitOfWork(engine),
        datasets_storage=make_storage(settings, settings.s3_datasets_bucket),
        results_storage=make_storage(settings, settings.s3_results_bucket),
        queue=CeleryTaskQueue(celery_app or build_celery(settings)),
        fetcher=make_fetcher(settings),
        webhook_sender=HttpWebhookSender(
            settings.allowed_webhook_networks, timeout_s=settings.webhook_timeout_s
        ),
        exports_loader=make_exports_loader(settings),
    )


def make_exports_loader(settings: Settings) -> "TableLoader":
    """Exports' loader over the configured destinations (ASSAY_DESTINATIONS)."""
    from services.exports.postgres import PostgresTableLoader

    urls = {name: url.get_secret_value() for name, url in settings.destinations.items()}
    return PostgresTableLoader(urls)


def make_fetcher(settings: Settings) -> HttpUrlFetcher:
    """Imports' downloader: public addresses, plus the networks the operator allows."""
    return HttpUrlFetcher(
        settings.allowed_import_networks,
        connect_timeout_s=settings.import_connect_timeout_s,
        read_timeout_s=settings.import_read_timeout_s,
    )


def prepare_storage(context: Context) -> None:
    """Create buckets (or folders) that do not exist yet."""
    for storage in (context.datasets_storage, context.results_storage):
        storage.ensure_ready()


def make_job_wakeups(settings: Settings) -> JobWakeups:
    """How job streams learn of new events: LISTEN/NOTIFY on PostgreSQL, changes of the file
    on SQLite, else (an in-memory database) a short poll.

    Not connected here: the PostgreSQL listener connects in the API's event loop when the app
    starts (or the first stream subscribes).
    """
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "postgresql":
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresJobWakeups(conninfo, JOB_EVENTS_CHANNEL)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        if database.startswith("file:"):  # a URI filename: no plain path to watch
            return PollingJobWakeups()
        return SqliteFileWakeups(Path(database))
    return PollingJobWakeups()


def create_api() -> "FastAPI":
    """ASGI factory used by uvicorn (`assay api`, `assay serve`)."""
    from api.app import create_app  # here, so that worker processes never load the web stack
    from api.logging import RequestLogContext

    settings = Settings()
    configure_logging(settings, RequestLogContext())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    context = bootstrap(settings, engine=engine)
    prepare_storage(context)
    stats = database_stats_reader(engine, settings.heartbeat_timeout_s)
    app = create_app(context, make_job_wakeups(settings), read_stats=stats)
    # The modules and app built so far live as long as the process: out of the collector's
    # sight, a full collection no longer walks them, which paused requests under load.
    gc.freeze()
    return app


def database_stats_reader(
    engine: Engine, heartbeat_timeout_s: float
) -> Callable[[], "DatabaseStats"]:
    """What /metrics reports of the database: four aggregate queries, on indexed statuses
    (the datasets' and artifacts' sums read their tables)."""
    from api.metrics import DatabaseStats

    datasets, jobs, artifacts = DatasetRow.__table__, JobRow.__table__, ArtifactRow.__table__
    queued, running = JobStatus.queued.value, JobStatus.running.value

    def read() -> DatabaseStats:
        cutoff = datetime.now(UTC) - timedelta(seconds=heartbeat_timeout_s)
        with engine.connect() as connection:
            dataset_rows = connection.execute(
                select(
                    datasets.c.status,
                    func.count(),
                    func.coalesce(func.sum(datasets.c.size_bytes), 0),
                ).group_by(datasets.c.status)
            ).all()
            job_rows = connection.execute(
                select(jobs.c.status, func.count()).group_by(jobs.c.status)
            ).all()
            oldest_queued = connection.execute(
                select(func.min(jobs.c.created_at)).where(jobs.c.status == queued)
            ).scalar_one()
            stalest, stale = connection.execute(
                select(
                    func.min(jobs.c.heartbeat_at),
                    func.coalesce(func.sum(case((jobs.c.heartbeat_at < cutoff, 1), else_=0)), 0),
                ).where(jobs.c.status == running)
            ).one()
            artifact_count, artifact_bytes = connection.execute(
                select(func.count(), func.coalesce(func.sum(artifacts.c.size_bytes), 0))
            ).one()
        return DatabaseStats(
            datasets={status: count for status, count, _ in dataset_rows},
            jobs={status: count for status, count in job_rows},
            dataset_bytes={status: int(size) for status, _, size in dataset_rows},
            artifacts=artifact_count,
            artifact_bytes=int(artifact_bytes),
            oldest_queued_at=oldest_queued,
            stalest_heartbeat_at=stalest,
            stale_running=int(stale),
        )

    return read


# Attributes every LogRecord has; the others on a record are the call's `extra` and the context.
_RECORD_ATTRIBUTES = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "taskName",
        "color_message",  # uvicorn's message with terminal colours
    }
)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, pid, then the context fields
    (request_id, owner, dataset_id, job_id, attempt, step) and any `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            # client, method, path, HTTP version, status
            entry |= {"client": args[0], "method": args[1], "path": args[2], "status": args[4]}
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_format(settings: Settings) -> str:
    """`json` or `text`: as set, else text on a terminal and JSON anywhere else."""
    if settings.log_format != "auto":
        return settings.log_format
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(settings: Settings, *context: logging.Filter) -> None:
    """Logs to stderr, as text or one JSON object a line (`context` adds the fields of what
    is being served: a request, a job)."""
    level = settings.log_level.upper()
    if log_format(settings) == "text":
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for context_filter in context:  # on the handler: records of every logger pass through it
        handler.addFilter(context_filter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning becomes a JSON line too


def _uvicorn_log_config(settings: Settings) -> dict[str, object] | None:
    """uvicorn's own (text) log set-up, or none for JSON: its loggers then reach the root's."""
    import uvicorn.config

    return uvicorn.config.LOGGING_CONFIG if log_format(settings) == "text" else None


# prometheus_client's multiprocess mode: every process of an `assay api` or `assay worker`
# writes its samples in one folder, which a scrape adds up.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "assay-metrics-"


def use_metrics_folder(role: str) -> Path:
    """A new folder for this run's metrics, set as PROMETHEUS_MULTIPROC_DIR for this process and
    its children, removed at exit; folders of earlier runs whose process is gone go too.

    Set before prometheus_client is first imported: it chooses its mode at import.
    """
    if "prometheus_client" in sys.modules and MULTIPROC_DIR_ENV not in os.environ:
        raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{METRICS_DIR_PREFIX}*"):
        parts = old.name.split("-")  # assay-metrics-<role>-<pid>-<random>
        owner = int(parts[3]) if len(parts) > 4 and parts[3].isdigit() else None
        # Our own pid on an old folder: a container restarted with the same pid.
        if owner is not None and (owner == os.getpid() or not _process_alive(owner)):
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{role}-{os.getpid()}-", dir=base))
    os.environ[MULTIPROC_DIR_ENV] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


# How long `serve` lets its worker finish the jobs it runs once a stop is asked; a job still
# running then is killed, and the recovery loop requeues it.
WORKER_STOP_GRACE_S = 60.0
# How long a process of `assay api --workers N` may take to answer its supervisor's health
# check before it is killed and replaced. A new process answers only once it has imported the
# app; with uvicorn's 5 s, a busy 2-core host restarted processes in a loop and never served.
API_WORKER_HEALTHCHECK_S = 30
# How long the API waits for open requests (a job's event stream, a long download) to end
# when it stops; without a bound, one open stream would keep it running.
API_SHUTDOWN_GRACE_S = 5


Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Port = Annotated[int, typer.Option(help="TCP port to listen on.")]


@cli.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from db.migrations import upgrade_to_head

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    console.print("[green]database is at the latest migration[/green]")


@cli.command()
def api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[
        int, typer.Option(envvar="WEB_CONCURRENCY", help="API processes.", min=1)
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Run the HTTP API (GET /metrics adds up every process's figures)."""
    import uvicorn

    use_metrics_folder("api")
    settings = Settings()
    configure_logging(settings)
    uvicorn.run(
        "main:create_api",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
        timeout_worker_healthcheck=API_WORKER_HEALTHCHECK_S,
        log_config=_uvicorn_log_config(settings),
    )


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    reaper: Annotated[bool, typer.Option(help="Run the recovery loop here.")] = True,
    schedules: Annotated[
        bool, typer.Option(help="Evaluate due schedules here (`serve` does; else `assay beat`).")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics of every worker process on this port."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface for --metrics-port (0.0.0.0 in a container).")
    ] = "127.0.0.1",
) -> None:
    """Run a background worker (Celery) that validates datasets and runs jobs."""
    if metrics_port is not None:
        use_metrics_folder("worker")
    settings = Settings()
    configure_logging(settings, JobLogContext())
    if metrics_port is not None:
        from workers.metrics import serve_metrics

        serve_metrics(metrics_host, metrics_port)
    app = build_celery(settings)
    prepare_storage(app.context())
    sweep_scratch(settings.tmp_dir, older_than_s=settings.task_hard_time_limit_s)
    if reaper:
        start_reaper_thread(app.context)
    start_webhook_relay_thread(app.context)
    if schedules:
        start_schedule_thread(app.context)
    app.worker_main(
        [
            # The start-up banner is plain text: in JSON, the `ready` line says as much.
            *(["--quiet"] if log_format(settings) == "json" else []),
            "worker",
            f"--loglevel={settings.log_level}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--hostname=assay-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


# How often `assay beat` has the schedules evaluated (each due time runs once whatever the tick).
SCHEDULE_TICK_S = 1.0


def start_schedule_thread(context_factory: Callable[[], Context]) -> None:
    """Evaluate due schedules every SCHEDULE_TICK_S in a daemon thread (beat, serve, worker)."""
    from use_cases.schedules import run_due_schedules

    def loop() -> None:
        context = context_factory()
        while True:
            time.sleep(SCHEDULE_TICK_S)
            try:
                run_due_schedules(
                    context.new_uow(),
                    context.queue,
                    datetime.now(UTC),
                    quota_bytes=context.settings.owner_quota_bytes,
                    storage=context.datasets_storage,
                    destinations=context.settings.destinations.keys(),
                )
            except Exception:  # an outage: the next tick tries again
                logging.getLogger(__name__).exception("schedule tick failed")

    threading.Thread(target=loop, name="assay-schedules", daemon=True).start()


@cli.command()
def beat() -> None:
    """Run Celery beat, which schedules the reaper; due schedules are evaluated here, every
    second, in a thread."""
    settings = Settings()
    configure_logging(settings)
    app = build_celery(settings)
    # Not a beat task: ticks queued behind a job backlog would expire and skip due times.
    start_schedule_thread(app.context)
    app.conf.beat_schedule = {
        "reap": {"task": "assay.reap", "schedule": settings.reaper_interval_s},
    }
    app.conf.beat_sync_every = 1  # the schedule file's age is beat's health check
    schedule_file = settings.data_dir / "celerybeat-schedule"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--loglevel={settings.log_level}", f"--schedule={schedule_file}"])


KEY_COLUMNS = (
    "id",
    "owner_id",
    "name",
    "scope",
    "prefix",
    "created_at",
    "last_used_at",
    "revoked_at",
)
keys_cli = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(datasets_cli, name="datasets")
cli.add_typer(jobs_cli, name="jobs")


def _keys_uow() -> UnitOfWork:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if make_url(url).get_backend_name() == "sqlite":
        # Embedded: a key may be made before the first `assay serve`, which would migrate.
        from db.migrations import upgrade_to_head

        upgrade_to_head(url)
    return SqlUnitOfWork(make_engine(url))


@keys_cli.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="The owner the key acts for.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    scope: Annotated[KeyScope, typer.Option(help="What the key may do.")] = KeyScope.write,
) -> None:
    """Create a key; it is printed once, as the last line (only its hash is stored)."""
    from use_cases.keys import create_key

    try:
        key, secret = create_key(_keys_uow(), owner_id=owner, name=name, scope=scope)
    except UseCaseError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(f"key {key.id} for owner {key.owner_id!r}, scope {key.scope.value}")
    console.print("Store it now: it is not shown again.", style="bold")
    print(secret)


@keys_cli.command("list")
def keys_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """Every key: id, owner, name, scope and times (never the secret)."""
    from rich.table import Table

    from use_cases.keys import list_keys

    keys = list_keys(_keys_uow(), owner)
    shown = [k.model_dump(mode="json", exclude={"secret_hash"}) for k in keys]
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    table = Table("id", "owner", "name", "scope", "prefix", "created", "last used", "revoked")
    for key in shown:
        table.add_row(*(str(key[f] or "") for f in KEY_COLUMNS))
    console.print(table)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[UUID, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key: refused from the next request on."""
    from use_cases.keys import revoke_key

    try:
        key = revoke_key(_keys_uow(), key_id)
    except UseCaseError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(f"key {key.id} of {key.owner_id!r} revoked at {key.revoked_at}")


@cli.command()
def retention(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted, and why.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option(help="List at most this many items.", min=1)] = 1000,
) -> None:
    """Apply the ASSAY_RETENTION_* settings now (the recovery loop does it every minute)."""
    from rich.table import Table

    from use_cases.retention import RetentionPolicy, list_expired, sweep

    settings = Settings()
    policy, uow = RetentionPolicy.from_settings(settings), _keys_uow()
    if not dry_run:
        datasets_storage = make_storage(settings, settings.s3_datasets_bucket)
        results_storage = make_storage(settings, settings.s3_results_bucket)
        total = 0
        while deleted := sweep(uow, datasets_storage, results_storage, policy, datetime.now(UTC)):
            total += deleted
        console.print(f"deleted {total} expired record(s) with their files")
        return
    items = list_expired(uow, policy, datetime.now(UTC), limit=limit)
    if as_json:
        print(json.dumps([item.model_dump(mode="json") for item in items], indent=2))
        return
    if not policy.enabled:
        console.print("retention is off: set ASSAY_RETENTION_JOB_DAYS or ..._DATASET_UNUSED_DAYS")
        return
    if not items:
        console.print("nothing has expired")
        return
    table = Table("kind", "id", "owner", "name", "status", "bytes", "since", "reason")
    for item in items:
        row = (item.kind, item.id, item.owner_id, item.name or "", item.status, item.bytes)
        table.add_row(*map(str, row), f"{item.since:%Y-%m-%d %H:%M}", item.reason)
    console.print(table)


@cli.command()
def serve(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run everything in one command: migrations, the API and a worker process."""
    import uvicorn

    from db.migrations import upgrade_to_head

    # Before anything starts: a taken port is reported at once, not after a worker is up.
    listener = _bind(host, port)
    # A stop asked from here on (SIGTERM, Ctrl-C) ends uvicorn, which then re-raises the signal
    # into this handler: the worker is stopped below before `serve` exits.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _stop_requested)
    worker_process: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_to_head(settings.resolved_database_url)
        keys_off = _open_on_loopback(settings, host)
        if keys_off:  # read by the API's own Settings() in create_api
            os.environ["ASSAY_AUTH_REQUIRED"] = "false"
        worker_process = subprocess.Popen(
            [sys.executable, "-m", "main", "worker", "--schedules"], preexec_fn=_die_with_parent
        )
        configure_logging(settings)
        config = uvicorn.Config(
            "main:create_api",
            factory=True,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
            log_config=_uvicorn_log_config(settings),
        )
        server = _announcing_server(config, lambda: _announce(settings, host, port, keys_off))
        server.run(sockets=[listener])
    except _StopRequested:
        pass
    finally:
        listener.close()
        if worker_process is not None:
            _stop(worker_process)
        for number in (signal.SIGINT, signal.SIGTERM):  # everything has stopped
            signal.signal(number, signal.SIG_IGN)
        console.print("stopped")


class _StopRequested(Exception):
    """SIGTERM or SIGINT reached `serve`."""


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _bind(host: str, port: int) -> socket.socket:
    """The API's address, bound but not yet accepting; a clear message and exit 1 if it cannot
    be bound (uvicorn starts accepting once the app is up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use; stop what uses it or choose another --port"
        else:
            reason = exc.strerror or str(exc)
        typer.secho(f"Cannot listen on {host}:{port}: {reason}.", fg="red", err=True)
        raise typer.Exit(1) from None
    listener.set_inheritable(True)
    return listener


def _announcing_server(config: "uvicorn.Config", announce: Callable[[], None]) -> "uvicorn.Server":
    """A uvicorn server that calls `announce` once it accepts requests."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                announce()

    return AnnouncingServer(config)


def _announce(settings: Settings, host: str, port: int, keys_off: bool) -> None:
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"[bold green]Assay is running at http://{shown}:{port}[/bold green] "
        f"(data in {settings.data_dir.resolve()}; API docs at /docs). Press Ctrl-C to stop.",
        soft_wrap=True,
    )
    if keys_off:
        console.print(
            "[yellow]No API keys needed: it listens on loopback only. Set ASSAY_AUTH_REQUIRED=true"
            " to require them (`assay keys create --owner NAME`).[/yellow]",
            soft_wrap=True,
        )
    elif not settings.auth_required:
        console.print("[bold red]API keys are OFF (ASSAY_AUTH_REQUIRED=false).[/bold red]")
    else:
        console.print("API keys required: `assay keys create --owner NAME` makes one.")


def _open_on_loopback(settings: Settings, host: str) -> bool:
    """`serve` runs without keys when nobody else can reach it and no one asked for them."""
    explicit = "auth_required" in settings.model_fields_set
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return loopback and not explicit


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM however `serve` ends, even killed. Elsewhere a stop still
    reaches it through the `finally` in serve()."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown for the worker: SIGTERM, then SIGKILL if its jobs do not end within
    WORKER_STOP_GRACE_S or a second stop is asked."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        try:
            process.wait(timeout=1)  # an idle worker stops at once
        except subprocess.TimeoutExpired:
            console.print("waiting for running jobs to finish (press Ctrl-C again to stop at once)")
            process.wait(timeout=WORKER_STOP_GRACE_S)
    except (subprocess.TimeoutExpired, _StopRequested):
        process.kill()
        process.wait()


if __name__ == "__main__":
    cli()
