"""Composition root: settings -> adapters -> FastAPI app, Celery app and the `assay` CLI."""

import contextlib
import ctypes
import errno
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from db.engine import make_engine
from ports.context import Context
from ports.repositories import UnitOfWork
from ports.storage import ObjectStorage
from ports.wakeups import JobWakeups
from repositories.jobs import JOB_EVENTS_CHANNEL
from repositories.unit_of_work import SqlUnitOfWork
from schemas.domain.records import KeyScope
from schemas.settings import Settings
from services.adapters.http_fetcher import HttpUrlFetcher
from services.adapters.storage.local import LocalObjectStorage
from services.adapters.wakeups.polling import PollingJobWakeups
from services.adapters.wakeups.postgres import PostgresJobWakeups
from services.adapters.wakeups.sqlite_file import SqliteFileWakeups
from use_cases.errors import UseCaseError
from workers.celery_app import AssayCelery, make_celery
from workers.celery_queue import CeleryTaskQueue
from workers.reaper import start_reaper_thread, sweep_scratch

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

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


def bootstrap(settings: Settings, celery_app: AssayCelery | None = None) -> Context:
    """Choose the adapters for the settings and wire them into a Context."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    return Context(
        settings=settings,
        new_uow=lambda: SqlUnitOfWork(engine),
        datasets_storage=make_storage(settings, settings.s3_datasets_bucket),
        results_storage=make_storage(settings, settings.s3_results_bucket),
        queue=CeleryTaskQueue(celery_app or build_celery(settings)),
        fetcher=make_fetcher(settings),
    )


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

    settings = Settings()
    configure_logging(settings)
    context = bootstrap(settings)
    prepare_storage(context)
    app = create_app(context, make_job_wakeups(settings))
    # The modules and app built so far live as long as the process: out of the collector's
    # sight, a full collection no longer walks them, which paused requests under load.
    gc.freeze()
    return app


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# How long `serve` lets its worker finish the jobs it runs once a stop is asked; a job still
# running then is killed, and the recovery loop requeues it.
WORKER_STOP_GRACE_S = 60.0
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
    """Run the HTTP API."""
    import uvicorn

    uvicorn.run(
        "main:create_api",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
    )


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    reaper: Annotated[bool, typer.Option(help="Run the recovery loop here.")] = True,
) -> None:
    """Run a background worker (Celery) that validates datasets and runs jobs."""
    settings = Settings()
    configure_logging(settings)
    app = build_celery(settings)
    prepare_storage(app.context())
    sweep_scratch(settings.tmp_dir, older_than_s=settings.task_hard_time_limit_s)
    if reaper:
        start_reaper_thread(app.context)
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--hostname=assay-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command()
def beat() -> None:
    """Run Celery beat: schedules the reaper (optional: workers run it too)."""
    settings = Settings()
    configure_logging(settings)
    app = build_celery(settings)
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
            [sys.executable, "-m", "main", "worker"], preexec_fn=_die_with_parent
        )
        config = uvicorn.Config(
            "main:create_api",
            factory=True,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
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
