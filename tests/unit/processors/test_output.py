"""Artifacts written through a pipe: the file, its sha256, and no hang when anything fails."""

import hashlib
from pathlib import Path

import duckdb
import pytest

from services.processing.processors.base import JobCancelled, ProcessorInputError, StepInput
from services.processing.processors.output import copy_to_file
from tests.unit.processors.conftest import StepFactory

QUERY = "SELECT i, i * 0.5 AS half, 'row ' || i AS label FROM range(200000) t(i)"


@pytest.mark.parametrize(
    "options",
    ["FORMAT csv, HEADER true", "FORMAT parquet, COMPRESSION zstd", "FORMAT json, ARRAY true"],
)
def test_file_and_hash_equal_a_direct_copy(
    make_step: StepFactory, tmp_path: Path, options: str
) -> None:
    step: StepInput = make_step()
    con = duckdb.connect()
    direct = tmp_path / "direct.out"
    con.execute(f"COPY ({QUERY}) TO '{direct}' ({options})")
    path = step.output_dir / "artifact.out"
    digest = copy_to_file(con, QUERY, path, options, step, "writing")
    assert path.read_bytes() == direct.read_bytes()
    assert digest == hashlib.sha256(direct.read_bytes()).hexdigest()
    assert sorted(p.name for p in step.output_dir.iterdir()) == ["artifact.out"]  # no FIFO left


def test_a_failing_query_raises_without_hanging(make_step: StepFactory) -> None:
    step: StepInput = make_step()
    con = duckdb.connect()
    with pytest.raises(ProcessorInputError, match="nope"):  # before any row
        copy_to_file(con, "SELECT nope", step.output_dir / "a.csv", "FORMAT csv", step, "")
    late = "CAST(CASE WHEN i < 150000 THEN '1' ELSE 'x' END AS INT)"
    with pytest.raises(ProcessorInputError, match="x"):  # while rows are already flowing
        query = f"SELECT {late} FROM range(200000) t(i)"
        copy_to_file(con, query, step.output_dir / "b.csv", "FORMAT csv", step, "")
    assert not [p for p in step.output_dir.iterdir() if p.name.endswith(".pipe")]


def test_a_write_error_is_raised_after_draining(make_step: StepFactory) -> None:
    step: StepInput = make_step()
    target = step.output_dir / "taken"
    target.mkdir()  # the artifact path cannot be opened as a file
    with pytest.raises(IsADirectoryError):
        copy_to_file(duckdb.connect(), QUERY, target, "FORMAT csv", step, "")


def test_a_cancel_before_the_copy_starts_does_not_hang(make_step: StepFactory) -> None:
    def cancelled(fraction: float, message: str) -> None:
        raise JobCancelled()

    step: StepInput = make_step(report=cancelled)
    with pytest.raises(JobCancelled):  # raised by the first report, before DuckDB opens the pipe
        copy_to_file(duckdb.connect(), QUERY, step.output_dir / "a.csv", "FORMAT csv", step, "")
    assert not [p for p in step.output_dir.iterdir() if p.name.endswith(".pipe")]


def test_a_copy_too_wide_for_two_threads_in_the_memory_limit_runs_on_one(
    make_step: StepFactory, tmp_path: Path
) -> None:
    # 61,440-row groups of 400-character rows: two threads' ordered batches overflow 32 MiB.
    wide = tmp_path / "wide.parquet"
    text = "repeat(chr((65 + i % 26)::INTEGER), 400)"
    duckdb.connect().execute(
        f"COPY (SELECT i, {text} AS s, i * 1.5 AS f FROM range(100000) t(i))"
        f" TO '{wide}' (FORMAT parquet, ROW_GROUP_SIZE 61440)"
    )
    query, options = f"SELECT * FROM read_parquet('{wide}')", "FORMAT csv, HEADER true"
    direct = tmp_path / "direct.csv"
    duckdb.connect().execute(f"COPY ({query}) TO '{direct}' ({options})")
    messages: list[str] = []
    step: StepInput = make_step(report=lambda fraction, message: messages.append(message))
    con = duckdb.connect(config={"memory_limit": "32MiB", "threads": 2})
    with pytest.raises(duckdb.OutOfMemoryException):  # what the first attempt meets
        con.execute(f"COPY ({query}) TO '{tmp_path / 'two.csv'}' ({options})")

    path = step.output_dir / "wide.csv"
    digest = copy_to_file(con, query, path, options, step, "writing")

    assert path.read_bytes() == direct.read_bytes()
    assert digest == hashlib.sha256(direct.read_bytes()).hexdigest()
    assert "writing (on one thread, to fit the memory limit)" in messages
    assert con.execute("SELECT current_setting('threads')").fetchone() == (2,)  # restored
