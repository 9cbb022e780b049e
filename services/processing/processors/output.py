"""Artifact files written by DuckDB COPY through a pipe, hashed on the way to disk.

Hashing a file after it is written reads it again, a cost that grows with it; reading DuckDB's
output from a FIFO instead overlaps the hash with the COPY, which leaves a core partly
idle while it orders and formats rows. The file's write-back to disk starts as it grows,
so the fsync of storing it has little left to wait for. Every DuckDB output format (CSV,
JSON, Parquet) is written front to back, so the bytes through the pipe are exactly the file.

CSV outputs can be escaped against formula injection (OWASP, "CSV Injection"): a spreadsheet
runs a cell starting with = + - @, a tab or a CR as a formula (`=HYPERLINK(...)`,
`=cmd|...`). With a step's `csv_formula_escape`, every text cell (and header name) starting
with one of them gets a leading `'`, which spreadsheets read as "this is text", and the text
columns are written quoted. Numbers are never escaped: a negative number stays a number. It is
off by default because it changes the data: `'-5` or `'=x` no longer reads back as `-5` or `=x`.
"""

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import duckdb
from pydantic import Field

from services.processing.processors.base import StepInput
from services.processing.processors.columns import quote
from services.processing.processors.duck import literal, parse_size, run_with_progress
from services.writeback import Writeback

# Content types of the artifacts every family writes.
CSV_TYPE = "text/csv"
PARQUET_TYPE = "application/vnd.apache.parquet"
PNG_TYPE = "image/png"

CHUNK_BYTES = 1024 * 1024
PIPE_BYTES = 1024 * 1024
# DuckDB's count of a COPY's memory per output column (it reserves vectors of 2,048 values per
# column and operator, whatever the rows): 10,000 columns needed 600 MiB to 1 GiB. A COPY
# expected over half its limit starts with the budget's numpy share added, instead of
# failing first (each try of such a COPY takes seconds).
COPY_BYTES_PER_COLUMN = 128 * 1024

# First characters that make a spreadsheet read a cell as a formula (OWASP).
FORMULA_STARTS = "=+-@\t\r"
# Types whose cells hold text from the data (a BLOB is written as its bytes); numbers, dates
# and the rest are formatted by DuckDB and cannot carry a formula.
TEXT_TYPES = frozenset({"VARCHAR", "BLOB"})

# Types a JSON number would not hold exactly (past 2^64, or more digits than a double keeps):
# written as JSON strings of the exact value, as the preview and summaries write decimals.
JSON_STRING_TYPES = frozenset({"HUGEINT", "UHUGEINT"})
FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
ISO_SECONDS = "'%Y-%m-%dT%H:%M:%S'"
ISO_MICROS = "'%Y-%m-%dT%H:%M:%S.%f'"


def text_cells(expr: str, duck_type: str, fmt: str, *, finite: bool = False) -> str:
    """SQL for a column's cells in a CSV or JSON output, in the forms README documents:
    timestamps in ISO 8601 with a T (a zone-aware one in UTC, +00:00; the fraction only when
    not zero, as Python's isoformat), and for JSON no NaN or infinity (null; `finite`: the
    column has none) and decimals and integers past 64 bits as strings. Other types are
    written by DuckDB as they are."""
    if duck_type in ("TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS"):
        # An infinite timestamp has no epoch: the ELSE branch prints it ("infinity").
        return (
            f"CASE WHEN epoch_us({expr}) % 1000000 = 0 THEN strftime({expr}, {ISO_SECONDS})"
            f" ELSE strftime({expr}, {ISO_MICROS}) END"
        )
    if duck_type == "TIMESTAMP_NS":
        return (
            f"CASE WHEN epoch_ns({expr}) % 1000000000 = 0 THEN strftime({expr}, {ISO_SECONDS})"
            f" ELSE strftime({expr}, '%Y-%m-%dT%H:%M:%S.%n') END"
        )
    if duck_type == "TIMESTAMP WITH TIME ZONE":
        # The instant's UTC wall time, read from its epoch: cheaper than a zone conversion.
        utc = f"make_timestamp(epoch_us({expr}))"
        return (
            f"CASE WHEN NOT isfinite({expr}) THEN CAST({expr} AS VARCHAR)"
            f" WHEN epoch_us({expr}) % 1000000 = 0 THEN strftime({utc}, {ISO_SECONDS}) || '+00:00'"
            f" ELSE strftime({utc}, {ISO_MICROS}) || '+00:00' END"
        )
    if duck_type == "TIME":
        clock = f"(DATE '1970-01-01' + {expr})"
        return (
            f"CASE WHEN microsecond({expr}) % 1000000 = 0 THEN strftime({clock}, '%H:%M:%S')"
            f" ELSE strftime({clock}, '%H:%M:%S.%f') END"
        )
    if duck_type == "TIME WITH TIME ZONE":  # DuckDB prints an offset of whole hours as +02
        return f"regexp_replace(CAST({expr} AS VARCHAR), '([+-][0-9][0-9])$', '\\1:00')"
    if fmt in ("json", "ndjson"):
        if duck_type in FLOAT_TYPES and not finite:
            return f"CASE WHEN isfinite({expr}) THEN {expr} END"
        if duck_type in JSON_STRING_TYPES or duck_type.startswith("DECIMAL"):
            return f"CAST({expr} AS VARCHAR)"
    return expr


CsvFormulaEscape = Annotated[
    bool,
    Field(
        description="CSV output only: prefix text cells (and header names) starting with"
        " = + - @, tab or CR with ' and quote the text columns, so that spreadsheets show them"
        " as text instead of running them as formulas. Numbers are not changed. Off by default:"
        " escaped values no longer read back as they were."
    ),
]


def escape_formula(text: str) -> str:
    """The text with a leading ' when a spreadsheet would read it as a formula."""
    return "'" + text if text[:1] and text[0] in FORMULA_STARTS else text


def escaped_cells(expr: str, duck_type: str) -> str:
    """SQL for a column's cells as escape_formula writes them; non-text types unchanged."""
    if duck_type not in TEXT_TYPES:
        return expr
    text = expr if duck_type == "VARCHAR" else f"CAST({expr} AS VARCHAR)"
    starts = ", ".join(str(ord(c)) for c in FORMULA_STARTS)
    # ascii() of the first character: a third of the time of left(x, 1) IN (...) or a regexp.
    return f"CASE WHEN ascii({text}) IN ({starts}) THEN '''' || {text} ELSE {text} END"


def force_quote(names: Sequence[str]) -> str:
    """The CSV COPY option quoting every non-null cell of these output columns, or ""."""
    if not names:
        return ""
    return f", FORCE_QUOTE ({', '.join(quote(name) for name in names)})"


class _PipeToFile(threading.Thread):
    """Drains a FIFO (see `draining`) into a file and a sha256, even after a write error."""

    def __init__(self, target: Path) -> None:
        super().__init__(name="artifact-pipe", daemon=True)
        self.target = target
        self.pipe_fd = -1
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None

    @contextlib.contextmanager
    def draining(self) -> Iterator[Path]:
        """Make the FIFO and drain it while the block runs; yields the path DuckDB writes to."""
        fifo = self.target.with_name(f".{self.target.name}.pipe")
        os.mkfifo(fifo, 0o600)
        # Both ends are opened here, so nothing waits for DuckDB to open the pipe; the reader
        # sees the end of the data once DuckDB and our spare write end are closed, whether the
        # COPY finished, failed or never started.
        self.pipe_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        _widen(self.pipe_fd)
        spare_fd = os.open(fifo, os.O_WRONLY)
        os.set_blocking(self.pipe_fd, True)
        self.start()
        try:
            yield fifo
        finally:
            os.close(spare_fd)
            self.join()
            fifo.unlink(missing_ok=True)

    def run(self) -> None:
        out = writeback = None
        try:
            out = open(self.target, "wb")  # noqa: SIM115 - closed below, kept open on errors
            writeback = Writeback(out.fileno())
        except OSError as exc:
            self.error = exc
        with open(self.pipe_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(CHUNK_BYTES):
                # Without an error both are open; naming them here narrows their types.
                if self.error is not None or out is None or writeback is None:
                    continue  # a writer blocked on a full pipe must still reach its end
                try:
                    self.digest.update(chunk)
                    out.write(chunk)
                    # A 1 MiB chunk passes the 8 KiB buffer straight to the kernel.
                    writeback.wrote(len(chunk))
                except OSError as exc:
                    self.error = exc
        if out is not None:
            try:
                out.close()
            except OSError as exc:  # the last bytes could not be flushed
                self.error = self.error or exc


def _widen(pipe_fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer, larger writes and reads take less time and CPU."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is not None:
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(pipe_fd, set_size, PIPE_BYTES)


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
    columns: int = 0,
) -> str:
    """COPY (query) TO path (options) with progress and cancel; the file's sha256. `columns`:
    how many the query writes (0: few).

    An ordered COPY holds a few row groups of output per DuckDB thread: when that does not
    fit the step's memory limit (long rows, a small budget), it runs again on one thread.
    Rows of thousands of columns need more still (DuckDB counts a vector of 2,048 values per
    column and operator, whatever the rows): then DuckDB also gets the numpy share of the
    budget, which a step writing its output does not use.
    """

    def attempt() -> str:
        pipe = _PipeToFile(path)  # truncates what a failed attempt wrote
        with pipe.draining() as fifo:
            copy = f"COPY ({query}) TO {literal(str(fifo))} ({options})"
            run_with_progress(con, copy, step.report, message, start=start, end=end)
        if pipe.error is not None:
            raise pipe.error
        return pipe.digest.hexdigest()

    limit = parse_size(step.limits.memory_limit)
    if columns * COPY_BYTES_PER_COLUMN <= limit // 2:
        try:
            return attempt()
        except duckdb.OutOfMemoryException:
            pass
    setting = con.execute("SELECT current_setting('threads')").fetchone()
    assert setting is not None  # a SELECT without FROM returns one row
    threads = int(setting[0])
    wider = f"{limit + step.limits.batch_memory_bytes}B"
    rungs = [
        ("on one thread", 1, step.limits.memory_limit),
        ("with more memory", threads, wider),
        ("on one thread with more memory", 1, wider),
    ]
    if columns * COPY_BYTES_PER_COLUMN > limit // 2:
        rungs = rungs[1:]  # wide rows: one thread would not help
    for n, (how, rung_threads, rung_limit) in enumerate(rungs):
        step.report(start, f"{message} ({how}, to fit the memory limit)")
        # The process's database: its steps run one at a time.
        con.execute(f"SET threads = {rung_threads}; SET memory_limit = {literal(rung_limit)}")
        try:
            return attempt()
        except duckdb.OutOfMemoryException:
            if n == len(rungs) - 1:
                raise
        finally:
            con.execute(
                f"SET threads = {threads}; SET memory_limit = {literal(step.limits.memory_limit)}"
            )
    raise AssertionError("the last rung returns or raises")
