"""DuckDB plumbing: progress, cancel (interrupt), errors, literals, sizes."""

import math
import os
import time
from pathlib import Path
from types import ModuleType

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from services.processing.processors.base import (
    ComputeLimits,
    JobCancelled,
    ProcessorInputError,
    ProgressCallback,
)
from services.processing.processors.duck import (
    connect,
    literal,
    map_with_progress,
    parse_size,
    run_with_progress,
)
from services.processing.processors.tables import anomalies, metrics, normalize
from tests.unit.processors.conftest import StepFactory, columns_of, write_parquet

# Minutes of work if nobody stops it.
LONG_QUERY = "SELECT count(DISTINCT (a * 7919) % 1000000007) FROM range(2000000000) t(a)"


def cancel_after(seconds: float) -> tuple[list[float], ProgressCallback]:
    """A report callback that raises JobCancelled once `seconds` have passed."""
    cancelled_at: list[float] = []
    start = time.monotonic()

    def report(fraction: float, message: str) -> None:
        assert 0.0 <= fraction <= 1.0 and message
        if time.monotonic() - start >= seconds:
            cancelled_at.append(time.monotonic())
            raise JobCancelled()

    return cancelled_at, report


def test_run_with_progress_returns_rows_and_reports(make_step: StepFactory) -> None:
    seen: list[tuple[float, str]] = []
    with connect(make_step()) as con:
        rows = run_with_progress(
            con, "SELECT 1 + 1", lambda f, m: seen.append((f, m)), "adding", start=0.25, end=0.5
        )
    assert rows == [(2,)]
    assert seen[0] == (0.25, "adding")


def test_interrupt_stops_a_long_query_quickly(make_step: StepFactory) -> None:
    cancelled_at, report = cancel_after(0.5)
    with connect(make_step()) as con, pytest.raises(JobCancelled):
        run_with_progress(con, LONG_QUERY, report, "working")
    assert time.monotonic() - cancelled_at[0] < 1.0
    with connect(make_step()) as con:  # a new connection works normally
        assert con.execute("SELECT 42").fetchall() == [(42,)]


def test_cancel_before_start_runs_nothing(make_step: StepFactory) -> None:
    def report(fraction: float, message: str) -> None:
        raise JobCancelled()

    start = time.monotonic()
    with connect(make_step()) as con, pytest.raises(JobCancelled):
        run_with_progress(con, LONG_QUERY, report, "working")
    assert time.monotonic() - start < 1.0


def test_map_with_progress_interrupts_every_task(make_step: StepFactory) -> None:
    cancelled_at, report = cancel_after(0.5)
    tasks = [lambda cursor: cursor.execute(LONG_QUERY).fetchall() for _ in range(3)]
    with connect(make_step()) as con, pytest.raises(JobCancelled):
        map_with_progress(con, tasks, report, "working", workers=2)
    assert time.monotonic() - cancelled_at[0] < 1.0


def test_map_with_progress_results_in_order(make_step: StepFactory) -> None:
    tasks = [lambda cursor, i=i: cursor.execute(f"SELECT {i}").fetchall()[0][0] for i in range(5)]
    with connect(make_step()) as con:
        assert map_with_progress(con, tasks, lambda f, m: None, "x", workers=2) == [0, 1, 2, 3, 4]


def test_data_errors_become_processor_input_errors(make_step: StepFactory) -> None:
    with connect(make_step()) as con:
        with pytest.raises(ProcessorInputError, match="Could not convert"):
            run_with_progress(con, "SELECT CAST('abc' AS INTEGER)", lambda f, m: None, "x")
        with pytest.raises(ProcessorInputError):
            map_with_progress(
                con,
                [lambda c: c.execute("SELECT 1 / 0 + 'x'::INT").fetchall()],
                print,
                "x",
                workers=1,
            )


def test_steps_share_a_database_not_their_tables_and_spill_to_spill_dir(
    make_step: StepFactory, tmp_path: Path
) -> None:
    limits = ComputeLimits(memory_limit="32MB", threads=2)
    step = make_step(limits=limits, spill_dir=tmp_path / "spill")
    with connect(step) as con:
        con.execute("CREATE TEMP TABLE t AS SELECT md5(range::VARCHAR) AS b FROM range(1000000)")
        assert con.execute("SELECT count(DISTINCT b) FROM t").fetchone() == (1000000,)
        assert con.execute("SELECT current_setting('temp_directory')").fetchone() == (
            str(tmp_path / "spill" / f"duckdb-{os.getpid()}"),
        )
    with connect(step) as con:  # the same database, a new connection: no leftovers
        tables = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'")
        assert tables.fetchone() == (0,)
    assert list(step.output_dir.iterdir()) == []


@pytest.mark.parametrize(
    "value", [0.1, -2.5e-300, 123456789.12345679, 1e20, math.inf, -math.inf, 7, True, "it's"]
)
def test_literal_round_trips(value: object) -> None:
    assert duckdb.connect().execute(f"SELECT {literal(value)}").fetchone() == (value,)


def test_literal_nan_and_null() -> None:
    con = duckdb.connect()
    row = con.execute(f"SELECT {literal(math.nan)}").fetchone()
    assert row is not None and math.isnan(row[0])
    assert con.execute(f"SELECT {literal(None)}").fetchone() == (None,)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GB", 10**9),
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("100 kb", 10**5),
        ("1.5GB", 1_500_000_000),
        ("123", 123),
        ("lots", 10**9),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    rows = 4_000_000
    rng = np.random.default_rng(1)
    table = pa.table(
        {f"x{i}": pa.array(rng.normal(0, 1, rows), mask=rng.random(rows) < 0.01) for i in range(4)}
        | {"k": pa.array(rng.integers(0, 10**6, rows))}
    )
    path = write_parquet(table, tmp_path_factory.mktemp("big") / "big.parquet")
    return path, columns_of(table)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("processor", "params"),
    [
        (metrics, metrics.MetricsParams()),
        (anomalies, anomalies.AnomaliesParams(method="modified_zscore")),
        (normalize, normalize.NormalizeParams(drop_duplicates=True, output_format="csv")),
    ],
)
def test_processors_stop_within_a_second_on_big_data(
    make_step: StepFactory, big_dataset: tuple[Path, list], processor: ModuleType, params: object
) -> None:
    path, columns = big_dataset
    cancelled_at, report = cancel_after(0.25)  # each processor is still busy then
    step = make_step(parquet_path=path, columns=columns, report=report)
    with pytest.raises(JobCancelled):
        processor.run(step, params)
    assert time.monotonic() - cancelled_at[0] < 1.0
