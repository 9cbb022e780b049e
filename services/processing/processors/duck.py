"""DuckDB plumbing shared by the processors: connection, progress/cancel, literals."""

import functools
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
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
    return duckdb.connect(":memory:", config=config)


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
    import pyarrow.parquet as pq  # the worker preloads it (ingest)

    return int(pq.read_metadata(path).num_rows)


def literal(value: Any) -> str:
    """An SQL literal for a Python scalar (floats are cast from text so they round-trip)."""
    if value is None:
        return "NULL"
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


def aggregate_columns(
    con: duckdb.DuckDBPyConnection,
    src: str,
    exprs: Sequence[str],
    aggregates: dict[str, str],
    step: StepInput,
    rows: int,
    *,
    start: float = 0.0,
    end: float = 1.0,
) -> list[dict[str, Any]]:
    """Per expression the aggregates {key: "sql with {e}"}, in as few scans as memory allows."""
    if not exprs:
        return []
    size = len(exprs)
    if any("quantile" in template for template in aggregates.values()):
        # An exact quantile keeps every value (8 bytes, plus slack) in memory.
        size = max(1, parse_size(step.limits.memory_limit) // 2 // (16 * max(rows, 1)))
    groups = [list(range(i, min(i + size, len(exprs)))) for i in range(0, len(exprs), size)]
    keys = list(aggregates)
    out: list[dict[str, Any]] = []
    for n, group in enumerate(groups):
        select = ", ".join(aggregates[k].format(e=exprs[i]) for i in group for k in keys)
        part = (end - start) / len(groups)
        values = run_with_progress(
            con,
            f"SELECT {select} FROM {src}",
            step.report,
            "computing statistics",
            start=start + n * part,
            end=start + (n + 1) * part,
        )[0]
        for j in range(len(group)):
            out.append(dict(zip(keys, values[j * len(keys) : (j + 1) * len(keys)], strict=True)))
    return out
