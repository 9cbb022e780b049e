"""AssayClient: the HTTP API as typed methods (sync, httpx)."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import unquote
from uuid import UUID

import httpx

from client.errors import ApiError, AssayConnectionError, WaitTimeout
from client.models import (
    Dataset,
    FailedRow,
    FailedRowPage,
    Job,
    JobEvent,
    JobResult,
    Preview,
    Processor,
    Step,
)
from client.sse import parse_sse

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"
CHUNK_BYTES = 256 * 1024
# The server sends a keep-alive comment while a job is quiet; silence longer than this is a
# dead connection, and the stream reconnects.
STREAM_READ_TIMEOUT_S = 60.0
# Bytes sent so far and the file's size (the multipart framing around it not counted).
ProgressCallback = Callable[[int, int], None]
StepsIn = Sequence[Step | Mapping[str, Any]]


class AssayClient:
    """A connection to an Assay server.

    `url` and `api_key` default to ASSAY_URL and ASSAY_API_KEY (then http://127.0.0.1:8000,
    no key: what `assay serve` on loopback accepts). Errors the API answers are raised as
    ApiError (status, code, message, details); an unreachable server as AssayConnectionError.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("ASSAY_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("ASSAY_API_KEY") or None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.datasets = DatasetsApi(self)
        self.jobs = JobsApi(self)

    def __enter__(self) -> AssayClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def processors(self) -> list[Processor]:
        """Every processor with its params JSON Schema."""
        return [Processor.model_validate(p) for p in self.request("GET", "/processors").json()]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call (`path` under /api/v1, or absolute); ApiError for a 4xx or 5xx."""
        url = path if path.startswith(("http://", "https://", API)) else API + path
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise AssayConnectionError(f"cannot reach {self.url}: {exc}") from exc
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def download(
        self, path: str, dest: Path, *, sha256: str | None = None, overwrite: bool = False
    ) -> Path:
        """Stream a file to `dest` (a folder: the server's file name in it); checked against
        `sha256` when given. Written to a temporary name first: never a half file at `dest`."""
        url = path if path.startswith(("http://", "https://", API)) else API + path
        try:
            with self.http.stream("GET", url, follow_redirects=True) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                if dest.is_dir():
                    dest = dest / _filename(response, url)
                if dest.exists() and not overwrite:
                    raise FileExistsError(f"{dest} exists (overwrite=True replaces it)")
                partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
                digest = hashlib.sha256()
                try:
                    with partial.open("wb") as out:
                        for chunk in response.iter_bytes(CHUNK_BYTES):
                            digest.update(chunk)
                            out.write(chunk)
                    if sha256 and digest.hexdigest() != sha256:
                        raise AssayConnectionError(
                            f"{dest.name}: checksum mismatch (got {digest.hexdigest()}, "
                            f"expected {sha256})"
                        )
                    partial.replace(dest)
                finally:
                    partial.unlink(missing_ok=True)
        except httpx.TransportError as exc:
            raise AssayConnectionError(f"download from {self.url} failed: {exc}") from exc
        return dest


class DatasetsApi:
    """/api/v1/datasets."""

    def __init__(self, client: AssayClient) -> None:
        self._client = client

    def upload(
        self,
        file: str | Path,
        *,
        name: str | None = None,
        format: str | None = None,
        null_values: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Dataset:
        """Upload a file, streamed from disk; `on_progress(sent, total)` after every chunk."""
        path = Path(file)
        fields = {"name": name, "format": format}
        if null_values is not None:
            fields["null_values"] = json.dumps(list(null_values))
        boundary = uuid.uuid4().hex
        with path.open("rb") as source:
            length, body = _multipart(
                source,
                path.name,
                path.stat().st_size,
                {k: v for k, v in fields.items() if v is not None},
                boundary,
                on_progress,
            )
            response = self._client.request(
                "POST",
                "/datasets",
                content=body,
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(length),
                },
            )
        return Dataset.model_validate(response.json())

    def import_url(
        self,
        url: str,
        *,
        name: str | None = None,
        format: str | None = None,
        null_values: Sequence[str] | None = None,
    ) -> Dataset:
        """Ask the server to download a dataset from an http(s) URL."""
        body: dict[str, Any] = {"url": url, "name": name, "format": format}
        if null_values is not None:
            body["null_values"] = list(null_values)
        response = self._client.request("POST", "/datasets/import", json=body)
        return Dataset.model_validate(response.json())

    def get(self, dataset_id: UUID | str) -> Dataset:
        return Dataset.model_validate(self._client.request("GET", f"/datasets/{dataset_id}").json())

    def list(
        self, *, status: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> Iterator[Dataset]:
        """Datasets, newest first, page after page as the iterator is consumed."""
        params = {"status": status, "limit": page_size}
        for item in _paged(self._client, "/datasets", params, limit):
            yield Dataset.model_validate(item)

    def wait(
        self,
        dataset_id: UUID | str,
        *,
        timeout: float | None = None,
        on_status: Callable[[Dataset], None] | None = None,
    ) -> Dataset:
        """Poll until the dataset is `ready` or `failed` (WaitTimeout after `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.2
        while True:
            dataset = self.get(dataset_id)
            if on_status:
                on_status(dataset)
            if dataset.done:
                return dataset
            if deadline is not None and time.monotonic() + delay > deadline:
                raise WaitTimeout(f"dataset {dataset_id} still {dataset.status} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def preview(self, dataset_id: UUID | str, *, limit: int = 20) -> Preview:
        response = self._client.request(
            "GET", f"/datasets/{dataset_id}/preview", params={"limit": limit}
        )
        return Preview.model_validate(response.json())

    def failed_rows_page(
        self, dataset_id: UUID | str, *, cursor: int = 0, page_size: int = 100
    ) -> FailedRowPage:
        response = self._client.request(
            "GET",
            f"/datasets/{dataset_id}/failed-rows",
            params={"cursor": cursor, "limit": page_size},
        )
        return FailedRowPage.model_validate(response.json())

    def failed_rows(
        self, dataset_id: UUID | str, *, page_size: int = 100, limit: int | None = None
    ) -> Iterator[FailedRow]:
        """Rows that could not be parsed, in line order, page after page."""
        cursor: int | None = 0
        count = 0
        while cursor is not None:
            page = self.failed_rows_page(dataset_id, cursor=cursor, page_size=page_size)
            for row in page.items:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield row
            cursor = page.next_cursor

    def download(
        self, dataset_id: UUID | str, dest: str | Path, *, overwrite: bool = False
    ) -> Path:
        """The original file, byte for byte, into `dest` (a file, or a folder for its name)."""
        dataset = self.get(dataset_id)
        return self._client.download(
            f"{API}/datasets/{dataset_id}/content",
            Path(dest),
            sha256=dataset.sha256 or None,
            overwrite=overwrite,
        )

    def delete(self, dataset_id: UUID | str) -> None:
        self._client.request("DELETE", f"/datasets/{dataset_id}")


class JobsApi:
    """/api/v1/jobs."""

    def __init__(self, client: AssayClient) -> None:
        self._client = client

    def submit(
        self,
        dataset_id: UUID | str,
        steps: StepsIn,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a job running `steps` ({processor, params}) in order on a dataset."""
        body = {
            "dataset_id": str(dataset_id),
            "steps": [
                s.model_dump(include={"processor", "params"})
                if isinstance(s, Step)
                else {"processor": s["processor"], "params": dict(s.get("params") or {})}
                for s in steps
            ],
            "name": name,
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._client.request("POST", "/jobs", json=body, headers=headers)
        return Job.model_validate(response.json())

    def get(self, job_id: UUID | str) -> Job:
        return Job.model_validate(self._client.request("GET", f"/jobs/{job_id}").json())

    def list(
        self,
        *,
        status: str | None = None,
        dataset_id: UUID | str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> Iterator[Job]:
        """Jobs, newest first, page after page as the iterator is consumed."""
        params = {
            "status": status,
            "dataset_id": None if dataset_id is None else str(dataset_id),
            "limit": page_size,
        }
        for item in _paged(self._client, "/jobs", params, limit):
            yield Job.model_validate(item)

    def events(self, job_id: UUID | str, *, after: int = 0) -> Iterator[JobEvent]:
        """The job's recorded history, oldest first (every page)."""
        cursor: int | None = after
        while cursor is not None:
            page = self._client.request(
                "GET", f"/jobs/{job_id}/events", params={"cursor": cursor, "limit": 1000}
            ).json()
            for item in page["items"]:
                yield JobEvent.model_validate(item)
            cursor = page["next_cursor"]

    def stream(
        self,
        job_id: UUID | str,
        *,
        last_event_id: int | None = None,
        max_retries: int = 8,
        on_reconnect: Callable[[int, Exception], None] | None = None,
    ) -> Iterator[JobEvent]:
        """The job's events live (SSE), from the start or after `last_event_id`, until its
        terminal event (completed, failed or cancelled).

        A dropped connection is resumed with Last-Event-ID, so no event is lost or repeated;
        `max_retries` failed reconnects in a row (with backoff) raise AssayConnectionError.
        `on_reconnect(attempt, error)` is told before each reconnect.
        """
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                for event in self._stream_once(job_id, headers):
                    if last is not None and event.id <= last:
                        continue  # never repeat, whatever the server replays
                    last, failures = event.id, 0
                    yield event
                    if event.terminal:
                        return
                # The server ended the stream without a terminal event: the job finished
                # before `last` or was deleted; else (a proxy cut it cleanly) read on.
                if self.get(job_id).done:
                    return
                error: Exception = AssayConnectionError("the stream ended early")
            except (httpx.TransportError, AssayConnectionError) as exc:
                error = exc
            except ApiError as exc:
                if exc.status < 500:  # 404: no such job (or not the caller's); 401: bad key
                    raise
                error = exc  # 503 while the server restarts or its database is away
            failures += 1
            if failures > max_retries:
                raise AssayConnectionError(
                    f"job {job_id}: stream lost after {max_retries} reconnects: {error}"
                ) from error
            if on_reconnect:
                on_reconnect(failures, error)
            time.sleep(min(0.25 * 2 ** (failures - 1), 5.0))

    def _stream_once(self, job_id: UUID | str, headers: dict[str, str]) -> Iterator[JobEvent]:
        timeout = httpx.Timeout(self._client.http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        url = f"{API}/jobs/{job_id}/stream"
        with self._client.http.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            for message in parse_sse(response.iter_lines()):
                if message.id is None or not message.id.isdigit():
                    continue
                data = json.loads(message.data) if message.data else {}
                created_at = data.pop("created_at", None)
                data.pop("job_id", None)
                data.pop("type", None)
                yield JobEvent(
                    id=int(message.id), type=message.event, payload=data, created_at=created_at
                )

    def wait(self, job_id: UUID | str, *, timeout: float | None = None) -> Job:
        """Follow the stream until the job has finished; the job as it ended. `timeout` is
        checked as events arrive (a quiet job is waited for until its next event)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.stream(job_id):
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {job_id} not finished after {timeout}s")
        return self.get(job_id)

    def cancel(self, job_id: UUID | str) -> Job:
        """Cancel a queued job, or ask a running one to stop (ApiError 409 once finished)."""
        return Job.model_validate(self._client.request("POST", f"/jobs/{job_id}/cancel").json())

    def result(self, job_id: UUID | str) -> JobResult:
        """Summaries and artifacts of a completed job (ApiError 409 before that)."""
        return JobResult.model_validate(
            self._client.request("GET", f"/jobs/{job_id}/result").json()
        )

    def download(
        self, job_id: UUID | str, name: str, dest: str | Path, *, overwrite: bool = False
    ) -> Path:
        """One artifact into `dest` (a file, or a folder for its name), checksum checked."""
        artifact = next((a for a in self.result(job_id).artifacts if a.name == name), None)
        if artifact is None:
            raise ApiError(
                404, "not_found", f"job {job_id} has no artifact {name!r}", {"name": name}
            )
        target = Path(dest)
        if target.is_dir():
            target = target / artifact.name
        return self._client.download(
            artifact.url, target, sha256=artifact.sha256, overwrite=overwrite
        )

    def download_all(
        self, job_id: UUID | str, folder: str | Path, *, overwrite: bool = False
    ) -> builtins.list[Path]:
        """Every artifact of a completed job into `folder` (created if missing)."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        return [
            self._client.download(a.url, target / a.name, sha256=a.sha256, overwrite=overwrite)
            for a in self.result(job_id).artifacts
        ]

    def delete(self, job_id: UUID | str) -> None:
        """Delete a finished job with its history and artifacts."""
        self._client.request("DELETE", f"/jobs/{job_id}")


def _paged(
    client: AssayClient, path: str, params: dict[str, Any], limit: int | None
) -> Iterator[dict[str, Any]]:
    """Items of a cursor-paginated list route, fetching a page only when it is reached."""
    query = {k: v for k, v in params.items() if v is not None}
    count = 0
    while True:
        page = client.request("GET", path, params=query).json()
        for item in page["items"]:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        if not page["next_cursor"]:
            return
        query["cursor"] = page["next_cursor"]


def _multipart(
    source: BinaryIO,
    filename: str,
    size: int,
    fields: dict[str, str],
    boundary: str,
    on_progress: ProgressCallback | None,
) -> tuple[int, Iterator[bytes]]:
    """A multipart/form-data body streamed from `source`, and its length (sent up front, so
    the server can refuse an upload over its limit before reading it)."""
    quoted = filename.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
    head = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for key, value in fields.items()
        )
        + (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        if on_progress:
            on_progress(0, size)
        # At most `size` bytes, the length announced, even if the file grew meanwhile.
        while sent < size and (chunk := source.read(min(CHUNK_BYTES, size - sent))):
            yield chunk
            # The generator resumes once httpx has written the chunk: it has been sent.
            sent += len(chunk)
            if on_progress:
                on_progress(sent, size)
        yield tail

    return len(head) + size + len(tail), body()


def _filename(response: httpx.Response, url: str) -> str:
    """The file name of a download: Content-Disposition's, else the URL's last segment."""
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename*" and value.lower().startswith("utf-8''"):
            name = Path(unquote(value[7:])).name
            if name:
                return name
        if key.lower() == "filename":
            name = Path(value.strip('"')).name
            if name:
                return name
    return Path(url.split("?")[0]).name or "download"
