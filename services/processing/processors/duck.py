"""DuckDB plumbing shared by the processors: connection, progress/cancel, literals."""

import functools
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import duckdb

from services.processing.processors.base import (
    JobCancelled,
    ProcessorInputError,
    ProgressCallback,
    StepInput,
)

T = TypeVar("T")
POLL_SECONDS = 0.2
# DuckDB's memory for each column a query reads, per thread: a decoded page and a few vectors,
# about four times the 8-byte values of a row group (61,440 rows: ~2 MiB; 5 rows: the floor).
SCAN_BYTES_PER_VALUE = 32
SCAN_COLUMN_FLOOR = 64 * 1024
# Columns one query reads or plans at most. Binding read_parquet costs memory in proportion
# to the file's columns, outside DuckDB's limit, so a query names the file once.
MAX_SCAN_COLUMNS = 1024
# Errors caused by the data itself (a value that does not cast, overflow...): not retryable.
DATA_ERRORS = (
    duckdb.ConversionException,
    duckdb.OutOfRangeException,
    duckdb.InvalidInputException,
    duckdb.BinderException,
)
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


@contextmanager
def connect(step: StepInput) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection (cursor) of this process's DuckDB database for the step's limits.

    Opening an in-memory database is slow, a cursor is not: steps share one database
    per process and settings, each with its own connection (temp tables and interrupt are
    per connection).
    """
    spill = step.spill_dir or Path(tempfile.gettempdir())
    database = _database(os.getpid(), step.limits.memory_limit, step.limits.threads, str(spill))
    con = database.cursor()
    try:
        # The progress bar must be enabled for query_progress(); never printed.
        con.execute(
            "SET enable_progress_bar = true; SET enable_progress_bar_print = false;"
            " SET progress_bar_time = 0"
        )
        yield con
    finally:
        con.close()


@functools.cache
def _database(
    pid: int, memory_limit: str, threads: int | None, spill_dir: str
) -> duckdb.DuckDBPyConnection:
    # Keyed by pid: a forked worker process never shares its parent's database.
    Path(spill_dir).mkdir(parents=True, exist_ok=True)  # DuckDB makes only the last level
    config: dict[str, Any] = {
        "memory_limit": memory_limit,
        "temp_directory": str(Path(spill_dir) / f"duckdb-{pid}"),
        # jemalloc keeps freed pages until a later allocation purges them: without its
        # background threads an idle worker holds what a large job left behind.
        "allocator_background_threads": True,
    }
    if threads:
        config["threads"] = threads
    database = duckdb.connect(":memory:", config=config)
    # Zone-aware values print (and fetch) in UTC whatever the host's zone; every cursor
    # inherits it. Not a config key: it needs the ICU extension loaded first.
    database.execute("SET GLOBAL TimeZone = 'UTC'")
    return database


# Above this many expressions a query is planned without DuckDB's common-subexpression
# optimizer: it takes time quadratic in them (a normalize of 3,000 columns spent 12 s in it,
# of 6,000 columns 47 s; 2 s and ~5 s without). The results are the same.
WIDE_EXPRESSIONS = 256


@contextmanager
def planned_wide(con: duckdb.DuckDBPyConnection, expressions: int) -> Iterator[None]:
    """Run the block's queries without the common-subexpression optimizer when they have more
    than WIDE_EXPRESSIONS expressions."""
    if expressions <= WIDE_EXPRESSIONS:
        yield
        return
    con.execute("SET disabled_optimizers = 'common_subexpressions'")
    try:
        yield
    finally:
        con.execute("RESET disabled_optimizers")


def parquet_source(path: Path, *, row_numbers: bool = False) -> str:
    """The read_parquet(...) table expression; `row_numbers` adds file_row_number (0-based)."""
    option = ", file_row_number = true" if row_numbers else ""
    return f"read_parquet({literal(str(path))}{option})"


def run_with_progress(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    report: ProgressCallback,
    message: str,
    *,
    start: float = 0.0,
    end: float = 1.0,
    params: list[Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Run `sql` in a worker thread, reporting DuckDB's progress; interrupt it on cancel."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["rows"] = con.execute(sql, params).fetchall()
        except BaseException as exc:
            outcome["error"] = exc

    report(start, message)
    thread = threading.Thread(target=work, name="duckdb-query", daemon=True)
    thread.start()
    fraction = start
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            if thread.is_alive():
                percent = con.query_progress()
                if percent >= 0:  # -1 while DuckDB cannot estimate
                    fraction = max(fraction, start + (end - start) * min(percent, 100.0) / 100.0)
                report(fraction, message)
    except BaseException:
        _interrupt_until_stopped(con, thread)
        raise
    if "error" in outcome:
        _reraise(outcome["error"])
    rows: list[tuple[Any, ...]] = outcome["rows"]
    return rows


def map_with_progress(
    con: duckdb.DuckDBPyConnection,
    tasks: Sequence[Callable[[duckdb.DuckDBPyConnection], T]],
    report: ProgressCallback,
    message: str,
    *,
    workers: int,
    start: float = 0.0,
    end: float = 1.0,
) -> list[T]:
    """Run tasks (each on its own cursor) in a thread pool; report progress; interrupt on cancel."""
    live: set[duckdb.DuckDBPyConnection] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def call(task: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        with lock:
            if stop.is_set():
                raise JobCancelled()
            cursor = con.cursor()
            live.add(cursor)
        try:
            return task(cursor)
        finally:
            with lock:
                live.discard(cursor)
            cursor.close()

    report(start, message)
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="processor") as pool:
        futures = [pool.submit(call, task) for task in tasks]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # surface a failure at once
                finished = len(futures) - len(pending)
                report(start + (end - start) * finished / len(futures), message)
        except BaseException as exc:
            stop.set()
            for future in futures:
                future.cancel()
            # Repeat: an interrupt sent just before a query starts is lost.
            while not all(future.done() for future in futures):
                with lock:
                    for cursor in live:
                        cursor.interrupt()
                wait(futures, timeout=0.05)
            _reraise(exc)
    return [future.result() for future in futures]


def out_of_memory(exc: BaseException) -> bool:
    """Whether an error is running out of memory: numpy's, pyarrow's or DuckDB's limit."""
    return isinstance(exc, MemoryError | duckdb.OutOfMemoryException)


def _interrupt_until_stopped(con: duckdb.DuckDBPyConnection, thread: threading.Thread) -> None:
    # Repeat: an interrupt sent before the query has really started is lost.
    while thread.is_alive():
        con.interrupt()
        thread.join(0.05)


def _reraise(exc: BaseException) -> NoReturn:
    # A DuckDB error caused by the data becomes ProcessorInputError; others pass unchanged.
    if isinstance(exc, DATA_ERRORS):
        raise ProcessorInputError(str(exc).splitlines()[0] or type(exc).__name__) from exc
    raise exc


def parquet_types(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    """Column name -> DuckDB type of the Parquet file (from its metadata only)."""
    # A relation binds without running: the types cost less than a DESCRIBE query.
    relation = con.sql(f"SELECT * FROM {parquet_source(path)}")
    return {name: str(type_) for name, type_ in zip(relation.columns, relation.types, strict=True)}


def parquet_rows(path: Path) -> int:
    """The Parquet file's row count, from its footer."""
    return parquet_shape(path).rows


@dataclass(frozen=True)
class ParquetShape:
    rows: int
    columns: int
    group_rows: int  # rows of its largest row group


def parquet_shape(path: Path) -> ParquetShape:
    """Rows, columns and the largest row group of a Parquet file, from its footer."""
    stat = path.stat()
    return _shape(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _shape(path: str, mtime_ns: int, size: int) -> ParquetShape:
    meta = _footer(path, mtime_ns, size)
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return ParquetShape(int(meta.num_rows), int(meta.num_columns), max(groups, default=0))


def footer(path: Path) -> Any:
    """The Parquet file's metadata (pyarrow's FileMetaData), read once per version of it."""
    stat = path.stat()
    return _footer(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _footer(path: str, mtime_ns: int, size: int) -> Any:
    import pyarrow.parquet as pq  # the worker preloads it (ingest)

    return pq.read_metadata(path)


def values_at(
    path: Path, column: str, positions: Any, tick: Callable[[], None] | None = None
) -> Any:
    """One column's values (a pyarrow Array, nulls kept) at sorted 0-based row positions (a
    numpy array), reading only the row groups that hold them, one at a time: a few rows cost
    a fraction of a scan, and memory stays a row group's. `tick` is called every POLL_SECONDS
    (a progress report, which may raise JobCancelled)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = footer(path)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
    groups = np.searchsorted(starts, positions, side="right") - 1
    bounds = np.flatnonzero(np.diff(groups)) + 1
    parquet = pq.ParquetFile(path, metadata=meta)
    parts = []
    last = time.monotonic()
    for at in np.split(np.arange(len(positions)), bounds):
        if not len(at):
            continue
        if tick is not None and time.monotonic() - last >= POLL_SECONDS:
            tick()
            last = time.monotonic()
        group = int(groups[at[0]])
        chunk = parquet.read_row_group(group, columns=[column]).column(0).combine_chunks()
        parts.append(pc.take(chunk, pa.array(positions[at] - starts[group])))
    kind = meta.schema.to_arrow_schema().field(column).type
    return pa.concat_arrays(parts) if parts else pa.array([], type=kind)


# Bytes a value of a fixed-width Parquet type takes once decoded.
_FIXED_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


def decoded_size_at_most(path: Path, limit: int, max_columns: int) -> bool:
    """Whether the Parquet file has at most `max_columns` columns and its values take at most
    `limit` bytes decoded, as far as its footer proves it.

    A fixed-width value takes its width; a column chunk of strings or bytes is bounded by
    its values times its uncompressed size (no value is longer than the chunk: a dictionary
    holds each distinct value once). Compression does not hide anything from either.
    """
    meta = footer(path)
    if meta.num_columns > max_columns:
        return False
    widths = []
    for j in range(meta.num_columns):
        column = meta.schema.column(j)
        width = _FIXED_WIDTHS.get(column.physical_type)
        if column.physical_type == "FIXED_LEN_BYTE_ARRAY":
            width = column.length
        widths.append(width)
    total = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j, width in enumerate(widths):
            chunk = group.column(j)
            values = chunk.num_values
            total += values * width if width is not None else values * chunk.total_uncompressed_size
            if total > limit:
                return False
    return True


def scan_width(step: StepInput) -> int:
    """How many columns of the step's Parquet copy one query may read at once.

    DuckDB holds a page and a few vectors per column and thread: a query over thousands of
    columns fails its memory limit, and each read_parquet in a query costs memory in
    proportion to the file's columns while it is planned (outside the limit). So queries
    over many columns go a batch at a time, a batch using at most half of the limit.
    """
    shape = parquet_shape(step.parquet_path)
    threads = step.limits.threads or os.cpu_count() or 1
    per_column = max(SCAN_COLUMN_FLOOR, SCAN_BYTES_PER_VALUE * shape.group_rows) * threads
    width = parse_size(step.limits.memory_limit) // 2 // per_column
    return int(max(4, min(MAX_SCAN_COLUMNS, width)))


def batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` in consecutive batches of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def literal(value: Any) -> str:
    """An SQL literal for a Python scalar (floats are cast from text so they round-trip)."""
    if value is None:
        return "NULL"
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # a numpy scalar
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"CAST('{value!r}' AS DOUBLE)"
    return "'" + str(value).replace("'", "''") + "'"


def parse_size(text: str) -> int:
    """Bytes in a DuckDB-style size ("1GB", "512MiB"); 1 GB if it cannot be parsed."""
    match = _SIZE.match(text)
    if not match:
        return 10**9
    number, unit = float(match.group(1)), match.group(2).lower()
    base = 1024 if "i" in unit else 1000
    power = "kmgt".find(unit[0]) + 1 if unit and unit[0] in "kmgt" else 0
    return int(number * base**power)
