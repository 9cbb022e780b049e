"""Export into PostgreSQL against `psql \\copy` of the same rows from CSV, in the same run.

    uv run python -m tests.benchmarks.exports                 # 5M rows
    uv run python -m tests.benchmarks.exports --rows 1000000  # quick

Generates the benchmark's 10-column rows (tests/benchmarks/jobs_vs_pandas.py) as a Parquet
typed copy and as CSV, creates a private database on 127.0.0.1:5432 (dropped at the end),
then times: `psql \\copy` of the CSV into a table of the same column types; the loader
(services/exports/postgres.py) creating the table from the Parquet copy; and the loader
replacing, then appending into, a table whose CHECK constraint rejects about 1% of the rows
(every rejected row must be reported). Create and replace load a staging table and rename it;
append loads straight into the table in one transaction.
Prints the figures and the ratios the targets are set on (1.5x and
2x). The loader's peak memory is the growth of this process's RSS while it runs.
"""

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from uuid import uuid4

import psutil
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ports.exports import LoadRequest, RejectedRow
from schemas.domain.exports import ExportMode
from services.exports.postgres import PostgresTableLoader, column_type
from tests.benchmarks.jobs_vs_pandas import CHUNK_ROWS, SCHEMA, _chunk
from tests.fixtures.databases import postgres_database, postgres_dsn

MIB = 1024 * 1024
# Rows whose i0 ends in 07 (i0 is uniform in 0..999): about 1%.
CHECK = "CHECK (i0 % 100 <> 7)"


def generate(folder: Path, rows: int) -> tuple[Path, Path]:
    parquet, csv = folder / "data.parquet", folder / "data.csv"
    with (
        pq.ParquetWriter(parquet, SCHEMA) as pw,
        pacsv.CSVWriter(csv, SCHEMA, write_options=pacsv.WriteOptions(include_header=True)) as cw,
    ):
        for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
            chunk = _chunk(index, start, min(CHUNK_ROWS, rows - start))
            pw.write_table(chunk, row_group_size=122_880)
            cw.write_table(chunk)
    return parquet, csv


def psql(dsn: str, command: str) -> None:
    subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qc", command], check=True)


def columns_ddl(check: str = "") -> str:
    columns = ", ".join(f'"{f.name}" {column_type(f.type)}' for f in SCHEMA)
    return f"({columns}{', ' + check if check else ''})"


class PeakRss:
    """Samples this process's RSS every 50 ms; `growth` is the peak above the start."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._base = self._process.memory_info().rss
        self.peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self._base) / MIB


def load(loader: PostgresTableLoader, parquet: Path, table: str, mode: ExportMode) -> dict:
    rejected: list[RejectedRow] = []
    request = LoadRequest(uuid4(), 1, "bench", table, mode, parquet)
    memory = PeakRss()
    started = time.perf_counter()
    summary = loader.load(
        request, progress=lambda d, t: None, rejected=rejected.extend, should_stop=lambda: False
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "loaded": summary.rows_loaded,
        "failed": summary.rows_failed,
        "reported": len(rejected),
        "rss_growth_mib": memory.stop(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="assay-export-bench-") as tmp:
        started = time.perf_counter()
        parquet, csv = generate(Path(tmp), args.rows)
        print(
            f"generated {args.rows:,} rows: CSV {csv.stat().st_size / MIB:.0f} MiB, Parquet "
            f"{parquet.stat().st_size / MIB:.0f} MiB in {time.perf_counter() - started:.1f} s"
        )
        expected_bad = pc.sum(
            pc.equal(pc.remainder(pq.read_table(parquet, columns=["i0"])["i0"], 100), 7)
        ).as_py()
        with postgres_database() as url:
            dsn = postgres_dsn(url.rsplit("/", 1)[1])
            loader = PostgresTableLoader({"bench": url})

            psql(dsn, f"CREATE TABLE by_psql {columns_ddl()}")
            started = time.perf_counter()
            psql(dsn, f"\\copy by_psql FROM '{csv}' (FORMAT csv, HEADER true)")
            copy_s = time.perf_counter() - started
            print(f"psql \\copy from CSV:             {copy_s:7.1f} s")

            clean = load(loader, parquet, "by_export", ExportMode.create)
            assert clean["loaded"] == args.rows and clean["failed"] == 0, clean
            print(
                f"export (create):                 {clean['seconds']:7.1f} s  "
                f"{clean['seconds'] / copy_s:.2f}x psql (target <= 1.5x), "
                f"RSS +{clean['rss_growth_mib']:.0f} MiB"
            )

            for mode in (ExportMode.replace, ExportMode.append):
                table = f"checked_{mode.value}"
                psql(dsn, f"CREATE TABLE {table} {columns_ddl(CHECK)}")
                rejecting = load(loader, parquet, table, mode)
                assert rejecting["failed"] == rejecting["reported"] == expected_bad, rejecting
                assert rejecting["loaded"] == args.rows - expected_bad, rejecting
                print(
                    f"export ({mode.value}, {expected_bad:,} rejected = "
                    f"{expected_bad / args.rows:.2%}): {rejecting['seconds']:7.1f} s  "
                    f"{rejecting['seconds'] / copy_s:.2f}x psql (target <= 2x), "
                    f"RSS +{rejecting['rss_growth_mib']:.0f} MiB, every rejected row reported"
                )


if __name__ == "__main__":
    main()
