"""`assay datasets ...` and `assay jobs ...`: the API from a terminal, through the Python client.

Tables for people, `--json` for scripts. Exit codes: 0 success; 2 wrong usage; 3 a client error
(the API refused the request, the server could not be reached, a step could not be read); 4 a
failed job (or a dataset that failed validation); 5 a cancelled job; 130 Ctrl-C while waiting
(the job keeps running).
"""

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from client.api import AssayClient
from client.errors import ApiError, AssayClientError
from client.models import Dataset, Job, JobEvent, JobResult
from client.steps import StepSyntaxError, parse_step, read_steps_file

EXIT_OK = 0
EXIT_CLIENT_ERROR = 3
EXIT_JOB_FAILED = 4
EXIT_JOB_CANCELLED = 5
EXIT_DETACHED = 130
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 2 wrong usage (unknown option, missing file); 3 client error "
    "(request refused by the API, server unreachable, a step that cannot be read); 4 job failed "
    "(or dataset failed validation); 5 job cancelled; 130 interrupted while waiting (the job "
    "keeps running)."
)

out = Console()
err = Console(stderr=True)

datasets_cli = typer.Typer(
    help=f"Datasets on an Assay server: upload, list, inspect, download, delete. {EXIT_CODES_HELP}",
    no_args_is_help=True,
)
jobs_cli = typer.Typer(
    help=f"Jobs on an Assay server: submit, follow, cancel, results. {EXIT_CODES_HELP}",
    no_args_is_help=True,
)

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="ASSAY_URL",
        help="Server URL (default http://127.0.0.1:8000).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="ASSAY_API_KEY", help="API key.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts), no tables.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until it has finished, with progress.")]


@contextlib.contextmanager
def handled(as_json: bool) -> Iterator[None]:
    """Client errors as a message (or a JSON error body) and exit code 3."""
    try:
        yield
    except ApiError as exc:
        if as_json:
            body = {"code": exc.code, "message": exc.message, "details": exc.details}
            print(json.dumps({"error": body, "status": exc.status}), file=sys.stderr)
        else:
            err.print(
                f"[red]Error {exc.status} {exc.code}:[/red] {exc.message}",
                highlight=False,
                soft_wrap=True,
            )
            if exc.details:
                err.print(json.dumps(exc.details, indent=2), highlight=False)
        raise typer.Exit(EXIT_CLIENT_ERROR) from None
    except (AssayClientError, StepSyntaxError, OSError) as exc:
        if as_json:
            print(
                json.dumps({"error": {"code": "client_error", "message": str(exc)}}),
                file=sys.stderr,
            )
        else:
            err.print(f"[red]Error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CLIENT_ERROR) from None


def emit_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, Sequence):
        print(json.dumps([v.model_dump(mode="json") for v in value], indent=2))
    elif isinstance(value, BaseModel):
        print(value.model_dump_json(indent=2))
    else:
        print(json.dumps(value, indent=2, default=str))


def _id_column() -> Column:
    # Ids are what people copy into the next command: never cut or wrapped.
    return Column("id", no_wrap=True, min_width=36)


def human_bytes(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


# ---- datasets -------------------------------------------------------------------------------


def dataset_table(datasets: list[Dataset]) -> Table:
    table = Table(
        _id_column(), "name", "format", "status", "rows", "failed rows", "size", "created"
    )
    for d in datasets:
        table.add_row(
            str(d.id),
            d.name,
            d.format,
            status_text(d.status),
            "" if d.row_count is None else str(d.row_count),
            str(d.failed_row_count),
            human_bytes(d.size_bytes),
            d.created_at.strftime("%m-%d %H:%M:%S"),
        )
    return table


def status_text(status: str) -> Text:
    colours = {"ready": "green", "completed": "green", "failed": "red", "cancelled": "yellow"}
    return Text(status, style=colours.get(status, "cyan"))


def show_dataset(dataset: Dataset) -> None:
    out.print(dataset_table([dataset]))
    if dataset.error:
        out.print(f"[red]error:[/red] {dataset.error}", highlight=False)
    if dataset.columns:
        columns = Table("column", "type", "nulls", title="schema")
        for c in dataset.columns:
            columns.add_row(c.name, c.type, str(c.null_count))
        out.print(columns)


def wait_for_dataset(client: AssayClient, dataset: Dataset, quiet: bool) -> Dataset:
    """Poll until validated, with a spinner; Ctrl-C detaches."""
    try:
        if quiet:
            return client.datasets.wait(dataset.id)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err) as bar:
            task = bar.add_task(f"{dataset.name}: {dataset.status}")
            return client.datasets.wait(
                dataset.id,
                on_status=lambda d: bar.update(task, description=f"{d.name}: {d.status}"),
            )
    except KeyboardInterrupt:
        err.print(
            f"Stopped waiting; the server goes on validating. See it with: "
            f"assay datasets show {dataset.id}"
        )
        raise typer.Exit(EXIT_DETACHED) from None


def dataset_exit(dataset: Dataset) -> None:
    if dataset.status == "failed":
        raise typer.Exit(EXIT_JOB_FAILED)


@datasets_cli.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="Display name (default: the file name).")] = None,
    format: Annotated[
        str | None, typer.Option(help="csv, json, ndjson or parquet (default: by extension).")
    ] = None,
    wait: Wait = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Upload a file (progress over bytes sent); with --wait, follow its validation too."""
    with handled(as_json), AssayClient(url, api_key) as client:
        if as_json:
            dataset = client.datasets.upload(file, name=name, format=format)
        else:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err) as bar:
                task = bar.add_task(f"upload {file.name}", total=file.stat().st_size)
                dataset = client.datasets.upload(
                    file,
                    name=name,
                    format=format,
                    on_progress=lambda sent, total: bar.update(task, completed=sent, total=total),
                )
        if wait:
            dataset = wait_for_dataset(client, dataset, quiet=as_json)
        emit_json(dataset) if as_json else show_dataset(dataset)
    dataset_exit(dataset)


@datasets_cli.command("import")
def datasets_import(
    source: Annotated[str, typer.Argument(help="http(s) URL of the file.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    format: Annotated[str | None, typer.Option(help="csv, json, ndjson or parquet.")] = None,
    wait: Wait = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Have the server download a dataset from a URL; with --wait, follow it to ready."""
    with handled(as_json), AssayClient(url, api_key) as client:
        dataset = client.datasets.import_url(source, name=name, format=format)
        if wait:
            dataset = wait_for_dataset(client, dataset, quiet=as_json)
        emit_json(dataset) if as_json else show_dataset(dataset)
    dataset_exit(dataset)


@datasets_cli.command("ls")
def datasets_ls(
    status: Annotated[str | None, typer.Option(help="uploaded, validating, ready, failed.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Datasets, newest first."""
    with handled(as_json), AssayClient(url, api_key) as client:
        datasets = list(client.datasets.list(status=status, page_size=min(limit, 200), limit=limit))
        emit_json(datasets) if as_json else out.print(dataset_table(datasets))


@datasets_cli.command("show")
def datasets_show(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """One dataset: status, counts, schema, error."""
    with handled(as_json), AssayClient(url, api_key) as client:
        dataset = client.datasets.get(dataset_id)
        emit_json(dataset) if as_json else show_dataset(dataset)


@datasets_cli.command("preview")
def datasets_preview(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    limit: Annotated[int, typer.Option(help="Rows (at most 100).")] = 20,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """The first rows of a ready dataset."""
    with handled(as_json), AssayClient(url, api_key) as client:
        preview = client.datasets.preview(dataset_id, limit=limit)
        if as_json:
            emit_json(preview)
            return
        table = Table(*(c.name for c in preview.columns))
        for row in preview.rows:
            table.add_row(
                *("" if row.get(c.name) is None else str(row[c.name]) for c in preview.columns)
            )
        out.print(table)


@datasets_cli.command("failed-rows")
def datasets_failed_rows(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Rows that could not be parsed: line number, reason, raw text."""
    with handled(as_json), AssayClient(url, api_key) as client:
        rows = list(
            client.datasets.failed_rows(dataset_id, page_size=min(limit, 1000), limit=limit)
        )
        if as_json:
            emit_json(rows)
            return
        table = Table("line", "reason", "raw text")
        for r in rows:
            table.add_row(str(r.line_number), r.reason, r.raw_text)
        out.print(table)


@datasets_cli.command("download")
def datasets_download(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File or folder [default: current folder].")
    ] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """The original file, byte for byte (checksum checked)."""
    with handled(as_json), AssayClient(url, api_key) as client:
        path = client.datasets.download(dataset_id, output, overwrite=force)
        emit_json({"path": str(path)}) if as_json else out.print(f"saved {path}")


@datasets_cli.command("rm")
def datasets_rm(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Delete a dataset and its files (refused while jobs use it)."""
    with handled(as_json), AssayClient(url, api_key) as client:
        client.datasets.delete(dataset_id)
        emit_json({"deleted": dataset_id}) if as_json else out.print(f"deleted {dataset_id}")


# ---- jobs -----------------------------------------------------------------------------------


class EtaColumn(ProgressColumn):
    """The server's estimate of the time left (progress events' eta_seconds)."""

    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        if task.finished or eta is None:
            return Text("")
        minutes, seconds = divmod(int(eta), 60)
        return Text(f"ETA {minutes}:{seconds:02d}", style="progress.remaining")


def job_table(jobs: list[Job]) -> Table:
    table = Table(_id_column(), "status", "progress", "steps", "dataset", "created")
    for j in jobs:
        table.add_row(
            str(j.id),
            status_text(j.status),
            f"{j.progress:.0%}",
            ", ".join(s.processor for s in j.steps),
            str(j.dataset_id or ""),
            j.created_at.strftime("%m-%d %H:%M:%S"),
        )
    return table


def show_job(job: Job) -> None:
    out.print(job_table([job]))
    if job.message:
        out.print(f"message: {job.message}", highlight=False)
    if job.error:
        out.print(f"[red]error:[/red] {error_text(job)}", highlight=False)


def error_text(job: Job) -> str:
    error = job.error or {}
    step = error.get("step")
    where = f" (step {step + 1})" if isinstance(step, int) else ""  # numbered as in the tables
    kind = f"{error['type']}: " if error.get("type") else ""
    return f"{kind}{error.get('message', job.message or 'no reason recorded')}{where}"


def summary_text(summary: Any) -> str:
    """A step's summary in a cell: scalars as key=value, collections by their size."""
    if not isinstance(summary, dict):
        return json.dumps(summary, default=str)[:200]
    parts = []
    for key, value in summary.items():
        if isinstance(value, dict | list):
            parts.append(f"{key}: {len(value)} item{'s' if len(value) != 1 else ''}")
        else:
            parts.append(f"{key}={value}")
    return "\n".join(parts)


def show_result(result: JobResult) -> None:
    steps = Table("step", "processor", "summary", title="result")
    for index, step in enumerate(result.steps):
        steps.add_row(
            str(index + 1), str(step.get("processor", "")), summary_text(step.get("summary", step))
        )
    out.print(steps)
    if result.artifacts:
        files = Table("artifact", "type", "size", "sha256")
        for a in result.artifacts:
            files.add_row(a.name, a.content_type, human_bytes(a.size_bytes), a.sha256[:16])
        out.print(files)
        out.print(f"Download: assay jobs download {result.job_id}", highlight=False)


def collect_steps(
    client: AssayClient, steps: list[str], steps_file: Path | None
) -> list[dict[str, Any]]:
    collected = read_steps_file(steps_file.read_text()) if steps_file else []
    if steps:
        processors = {p.name: p for p in client.processors()}
        collected += [parse_step(s, processors) for s in steps]
    if not collected:
        raise StepSyntaxError("no steps: give --step (repeatable) or --steps-file")
    return collected


def follow(client: AssayClient, job: Job, quiet: bool) -> Job:
    """Follow the job's stream to its end, a bar per step; Ctrl-C detaches (exit 130)."""
    try:
        if quiet:
            return client.jobs.wait(job.id)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            EtaColumn(),
            TextColumn("{task.fields[message]}", style="dim"),
        )
        with Progress(*columns, console=err) as bar:
            tasks = [
                bar.add_task(f"{i + 1}. {s.processor}", total=1.0, message="", eta=None)
                for i, s in enumerate(job.steps)
            ]
            notice = lambda attempt, error: err.print(  # noqa: E731
                f"[yellow]connection lost ({error}); resuming (attempt {attempt})[/yellow]"
            )
            done: set[int] = set()
            for event in client.jobs.stream(job.id, on_reconnect=notice):
                show_event(bar, tasks, done, event)
    except KeyboardInterrupt:
        err.print(
            f"Detached; job {job.id} keeps running. Resume watching with: "
            f"assay jobs watch {job.id}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_DETACHED) from None
    return client.jobs.get(job.id)


def show_event(bar: Progress, tasks: list[Any], done: set[int], event: JobEvent) -> None:
    """One stream event on the bars; `done` holds the steps already completed (a progress
    event recorded late, after its step completed, must not move their bar back)."""
    step = event.step
    count = len(tasks)
    if step is not None and step in done:
        return
    if event.type == "step_started" and step is not None and step < count:
        bar.update(tasks[step], completed=0.0, message="running")
    elif (
        event.type == "progress"
        and step is not None
        and step < count
        and event.progress is not None
    ):
        # Progress is the job's (0..1 over all steps); the step's own share is its bar.
        fraction = min(max(event.progress * count - step, 0.0), 1.0)
        message = (event.message or "").split(": ", 1)[-1]
        bar.update(tasks[step], completed=fraction, eta=event.eta_seconds, message=message)
    elif event.type == "step_completed" and step is not None and step < count:
        done.add(step)
        bar.update(tasks[step], completed=1.0, message="done", eta=None)
    elif event.type in ("retried", "requeued"):
        err.print(f"[yellow]{event.type}[/yellow]: {event.payload}", highlight=False)


def finish(client: AssayClient, job: Job, as_json: bool) -> NoReturn:
    """Print how the job ended (the result when it completed) and exit with its code."""
    result = client.jobs.result(job.id) if job.status == "completed" else None
    if as_json:
        body: dict[str, Any] = {"job": job.model_dump(mode="json")}
        if result is not None:
            body["result"] = result.model_dump(mode="json")
        emit_json(body)
    elif result is not None:
        show_result(result)
    else:
        show_job(job)
    if job.status == "failed":
        if not as_json:
            err.print(
                f"[red]Job {job.id} failed:[/red] {error_text(job)}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(EXIT_JOB_FAILED)
    if job.status == "cancelled":
        raise typer.Exit(EXIT_JOB_CANCELLED)
    raise typer.Exit(EXIT_OK)


@jobs_cli.command("submit")
def jobs_submit(
    dataset_id: Annotated[str, typer.Argument(help="The dataset's id.")],
    step: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            help="A step: 'name key=value ...' (repeatable, run in order). Values are read by "
            "the processor's params schema: lists by commas (columns=a,b), numbers and objects "
            "as JSON.",
        ),
    ] = None,
    steps_file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help='JSON list of {"processor", "params"}.'),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the job.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Resubmitting with the same key returns the same job.")
    ] = None,
    wait: Wait = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Submit a job; with --wait, a progress bar per step, then the result."""
    with handled(as_json), AssayClient(url, api_key) as client:
        steps = collect_steps(client, step or [], steps_file)
        job = client.jobs.submit(dataset_id, steps, name=name, idempotency_key=idempotency_key)
        if not wait:
            emit_json(job) if as_json else show_job(job)
            if not as_json:
                out.print(f"Follow it with: assay jobs watch {job.id}", highlight=False)
            return
        job = follow(client, job, quiet=as_json)
        finish(client, job, as_json)


@jobs_cli.command("watch")
def jobs_watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Follow a job to its end (progress per step, resumes after a dropped connection)."""
    with handled(as_json), AssayClient(url, api_key) as client:
        job = follow(client, client.jobs.get(job_id), quiet=as_json)
        finish(client, job, as_json)


@jobs_cli.command("ls")
def jobs_ls(
    status: Annotated[
        str | None, typer.Option(help="queued, running, completed, failed, cancelled.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset's jobs.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Jobs, newest first."""
    with handled(as_json), AssayClient(url, api_key) as client:
        jobs = list(
            client.jobs.list(
                status=status, dataset_id=dataset, page_size=min(limit, 200), limit=limit
            )
        )
        emit_json(jobs) if as_json else out.print(job_table(jobs))


@jobs_cli.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """One job: status, progress, steps, error."""
    with handled(as_json), AssayClient(url, api_key) as client:
        job = client.jobs.get(job_id)
        if as_json:
            emit_json(job)
            return
        show_job(job)
        steps = Table("step", "processor", "params")
        for index, s in enumerate(job.steps):
            steps.add_row(str(index + 1), s.processor, json.dumps(s.params))
        out.print(steps)


@jobs_cli.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    with handled(as_json), AssayClient(url, api_key) as client:
        job = client.jobs.cancel(job_id)
        if as_json:
            emit_json(job)
        else:
            state = "cancelled" if job.status == "cancelled" else "cancel requested"
            out.print(f"job {job.id}: {state}", highlight=False)


@jobs_cli.command("result")
def jobs_result(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Step summaries and artifacts of a completed job."""
    with handled(as_json), AssayClient(url, api_key) as client:
        result = client.jobs.result(job_id)
        emit_json(result) if as_json else show_result(result)


@jobs_cli.command("download")
def jobs_download(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    name: Annotated[
        str | None, typer.Argument(help="One artifact [default: every artifact].")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder (or file, for one artifact).")
    ] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Download a completed job's artifacts (checksums checked)."""
    with handled(as_json), AssayClient(url, api_key) as client:
        if name:
            paths = [client.jobs.download(job_id, name, output, overwrite=force)]
        else:
            paths = client.jobs.download_all(job_id, output, overwrite=force)
        if as_json:
            emit_json({"paths": [str(p) for p in paths]})
        else:
            for path in paths:
                out.print(f"saved {path}", highlight=False)
