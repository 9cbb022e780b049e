"""Artifact files written by DuckDB COPY through a pipe, hashed on the way to disk.

Hashing a file after it is written reads it again (0.5 s for 780 MB); reading DuckDB's
output from a FIFO instead overlaps the hash with the COPY, which leaves a core partly
idle while it orders and formats rows. Every DuckDB output format (CSV, JSON, Parquet)
is written front to back, so the bytes through the pipe are exactly the file.
"""

import contextlib
import hashlib
import os
import threading
from pathlib import Path

import duckdb

from services.processors.base import StepInput
from services.processors.duck import literal, run_with_progress

CHUNK_BYTES = 1024 * 1024


class _PipeToFile(threading.Thread):
    """Drains a FIFO into a file and a sha256; keeps draining after a write error."""

    def __init__(self, fifo: Path, target: Path) -> None:
        super().__init__(name="artifact-pipe", daemon=True)
        self.fifo, self.target = fifo, target
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            out = open(self.target, "wb")  # noqa: SIM115 - closed below, kept open on errors
        except OSError as exc:
            self.error, out = exc, None
        # Opening a FIFO for reading waits for the writer (DuckDB, or release() below).
        with open(self.fifo, "rb", buffering=0) as pipe:
            while chunk := pipe.read(CHUNK_BYTES):
                if self.error is not None:
                    continue  # a writer blocked on a full pipe must still reach its end
                try:
                    self.digest.update(chunk)
                    out.write(chunk)  # type: ignore[union-attr]
                except OSError as exc:
                    self.error = exc
        if out is not None:
            out.close()

    def release(self) -> None:
        """Unblock a reader still waiting for a writer (the COPY failed before opening)."""
        with contextlib.suppress(OSError):  # ENXIO: no reader is waiting any more
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))


def copy_to_file(
    con: duckdb.DuckDBPyConnection,
    query: str,
    path: Path,
    options: str,
    step: StepInput,
    message: str,
    *,
    start: float = 0.0,
    end: float = 1.0,
) -> str:
    """COPY (query) TO path (options) with progress and cancel; the file's sha256."""
    fifo = path.with_name(f".{path.name}.pipe")
    os.mkfifo(fifo, 0o600)
    pipe = _PipeToFile(fifo, path)
    pipe.start()
    try:
        copy = f"COPY ({query}) TO {literal(str(fifo))} ({options})"
        run_with_progress(con, copy, step.report, message, start=start, end=end)
    finally:
        pipe.release()
        pipe.join()
        fifo.unlink(missing_ok=True)
    if pipe.error is not None:
        raise pipe.error
    return pipe.digest.hexdigest()
