"""Streaming multipart upload: the file part is spooled to disk in chunks, hashed on the way.

The event loop only receives the body; each upload has a thread of its own that parses,
hashes and writes it, in order, while the next bytes arrive. Hashing and writing release
the GIL, so on two cores receiving and spooling overlap instead of taking turns. At most
MAX_IN_FLIGHT batches (8 MiB) wait for that thread, so a slow disk slows the client down
instead of filling memory.

Everything but the file's content is small and bounded: each other field (`name`, `format`,
`null_values`) at MAX_FIELD_BYTES, and the whole body besides the file's bytes (boundaries, part
headers with the file name, fields the route ignores) at MAX_FORM_OVERHEAD_BYTES, so no part of a
form can grow in memory past the upload limit's reach.
"""

import asyncio
import hashlib
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget

from api.body_limit import declared_length
from services.writeback import Writeback
from use_cases.datasets import ReceivedFile
from use_cases.errors import InvalidInput, PayloadTooLarge

HAND_OFF_BYTES = 1024 * 1024  # parse in 1 MiB batches off the event loop
MAX_IN_FLIGHT = 8  # batches received but not yet parsed, per upload
MAX_FIELD_BYTES = 4 * 1024  # a form field other than `file`
MAX_FORM_OVERHEAD_BYTES = 64 * 1024  # bytes of the body outside the file's content


class _SpoolTarget(BaseTarget):
    """Writes the file part to disk and hashes it, refusing to grow past a limit."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.seen = False
        self.finished = False
        self._file = open(path, "wb")  # noqa: SIM115 - closed in on_finish / close
        # Storing the spooled file fsyncs it; its write-back starts as it arrives instead.
        self._writeback = Writeback(self._file.fileno())

    def on_start(self) -> None:
        self.seen = True

    def on_data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"file exceeds the upload limit of {self.max_bytes} bytes",
                {"max_upload_bytes": self.max_bytes, "received_bytes": self.size},
            )
        self.sha256.update(chunk)
        self._file.write(chunk)
        self._writeback.wrote(len(chunk))  # bytes still in the file's buffer wait for the fsync

    def on_finish(self) -> None:
        self.finished = True
        self._file.close()

    def close(self) -> None:
        self._file.close()


class _FieldTarget(BaseTarget):
    """Keeps a short form field in memory, refusing one longer than `max_bytes`."""

    def __init__(self, field: str, max_bytes: int = MAX_FIELD_BYTES) -> None:
        super().__init__()
        self.field = field
        self.max_bytes = max_bytes
        self.size = 0
        self.seen = False  # sent, even empty
        self._chunks: list[bytes] = []

    def on_start(self) -> None:
        self.seen = True

    def on_data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"form field `{self.field}` is longer than {self.max_bytes} bytes",
                {"field": self.field, "max_field_bytes": self.max_bytes},
            )
        self._chunks.append(chunk)

    @property
    def value(self) -> bytes:
        return b"".join(self._chunks)


@dataclass
class ParsedUpload:
    received: ReceivedFile
    filename: str | None
    name: str | None
    format: str | None
    null_values: str | None = None  # as sent ("" when sent empty); None when not sent


async def receive_upload(request: Request, spool_dir: Path, max_bytes: int) -> ParsedUpload:
    """Parse a multipart body (fields file, name, format, null_values); the caller removes the
    spool file."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInput(
            "expected a multipart/form-data body with a `file` field",
            {"content_type": content_type or None},
        )
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > max_bytes + MAX_FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the upload limit of {max_bytes} bytes",
            {"max_upload_bytes": max_bytes, "request_bytes": declared},
        )
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, spool_name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
    os.close(fd)
    spool = Path(spool_name)
    file_target = _SpoolTarget(spool, max_bytes)
    name_target, format_target = _FieldTarget("name"), _FieldTarget("format")
    nulls_target = _FieldTarget("null_values")
    try:
        try:
            parser = StreamingFormDataParser(headers=dict(request.headers))
        except Exception as exc:
            raise InvalidInput(f"malformed multipart body: {exc}") from exc
        parser.register("file", file_target)
        parser.register("name", name_target)
        parser.register("format", format_target)
        parser.register("null_values", nulls_target)
        feeder = _Feeder(parser, file_target)
        try:
            batch: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                batch.append(chunk)
                size += len(chunk)
                if size >= HAND_OFF_BYTES:
                    await feeder.feed(batch)
                    batch, size = [], 0
            if batch:
                await feeder.feed(batch)
            await feeder.drain()
        finally:
            await feeder.close()
        file_target.close()
        if not file_target.seen:
            raise InvalidInput("the multipart body has no `file` field", {"field": "file"})
        if not file_target.finished:  # the body ended before the part's closing boundary
            raise InvalidInput(
                f"the upload was cut off after {file_target.size} bytes of `file`",
                {"field": "file", "received_bytes": file_target.size},
            )
    except BaseException:
        file_target.close()
        spool.unlink(missing_ok=True)
        raise
    return ParsedUpload(
        received=ReceivedFile(
            path=spool, size_bytes=file_target.size, sha256=file_target.sha256.hexdigest()
        ),
        filename=file_target.multipart_filename,
        name=_text(name_target),
        format=_text(format_target),
        null_values=nulls_target.value.decode("utf-8", "replace") if nulls_target.seen else None,
    )


class _Feeder:
    """Feeds batches to the parser in order, on a thread of its own, a few at a time."""

    def __init__(self, parser: StreamingFormDataParser, file_target: _SpoolTarget) -> None:
        self._parser = parser
        self._file_target = file_target
        self._fed = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload")
        self._pending: deque[asyncio.Future[None]] = deque()
        self._stopped = False

    async def feed(self, batch: list[bytes]) -> None:
        """Hand a batch over; waits while MAX_IN_FLIGHT are queued, raises a failed one's error."""
        loop = asyncio.get_running_loop()
        self._pending.append(loop.run_in_executor(self._executor, self._run, batch))
        while self._pending and (len(self._pending) > MAX_IN_FLIGHT or self._pending[0].done()):
            await self._pending.popleft()

    async def drain(self) -> None:
        """Wait until every batch is parsed; raises the first error."""
        while self._pending:
            await self._pending.popleft()

    async def close(self) -> None:
        """Skip what is still queued and wait for the thread, so the spool file can be closed."""
        self._stopped = True
        for future in self._pending:  # retrieve errors nobody waits for, so none is logged
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def _run(self, batch: list[bytes]) -> None:
        if self._stopped:
            return
        try:
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            _feed(self._parser, data)
            self._fed += len(data)
            # The parser holds part headers (the file name) in memory however long they are.
            if self._fed - self._file_target.size > MAX_FORM_OVERHEAD_BYTES:
                raise PayloadTooLarge(
                    f"the multipart body holds more than {MAX_FORM_OVERHEAD_BYTES} bytes besides "
                    "the file's content (part headers, the file name, other fields)",
                    {"max_form_overhead_bytes": MAX_FORM_OVERHEAD_BYTES},
                )
        except BaseException:
            self._stopped = True  # the parser is in an error state: later batches are moot
            raise


def _feed(parser: StreamingFormDataParser, data: bytes) -> None:
    try:
        parser.data_received(data)
    except PayloadTooLarge:
        raise
    except Exception as exc:
        # The parser wraps errors raised by targets; unwrap our own.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, PayloadTooLarge):
            raise cause from None
        raise InvalidInput(f"malformed multipart body: {exc}") from exc


def _text(target: _FieldTarget) -> str | None:
    value = target.value.decode("utf-8", errors="replace").strip()
    return value or None
