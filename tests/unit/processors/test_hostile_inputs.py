"""Hostile inputs stay within the worker's memory budget, with results equal to pandas.

Each job runs the steps as the worker does (one profile cache for the job), in a fresh
interpreter (tests/unit/processors/hostile_job.py) whose peak resident memory (VmHWM) is
watched every 20 ms: it is killed above the ceiling, so a regression fails the test instead of
taking the machine down.

- Wide: thousands of numeric columns of 5 rows. A UNION of one scan per column planned the
  file's schema once per column: 3,000 columns took an anomalies step to 21.6 GB.
- Inflating: a Parquet file of 50M integers in runs (a few hundred KB) that the numpy profile
  fetched whole (1,042 MiB at 50M rows, 3.4 GB at 200M).
"""

import json
import math
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.processing.datasets.common import PARQUET_COPY_OPTIONS

ROOT = Path(__file__).resolve().parents[3]
BUDGET_MB = 1024
# The budget plus what the interpreter and its libraries take (~100-150 MiB).
WIDE_CEILING_MIB = BUDGET_MB + 128
# The numpy path took 1,042 MiB on the inflating dataset; the streaming one ~215 MiB.
INFLATING_CEILING_MIB = 512
ROWS = 5
CHECKED = ["c0", "c1", "c2"]


def run_watched(
    parquet: Path, out: Path, steps: list[dict[str, Any]], ceiling_mib: int
) -> tuple[list[dict[str, Any]], int]:
    """The job's summaries and its peak memory (MiB); fails the test above `ceiling_mib`."""
    args = [str(parquet), str(out), str(BUDGET_MB), json.dumps(steps)]
    command = [sys.executable, "-m", "tests.unit.processors.hostile_job", *args]
    process = subprocess.Popen(command, cwd=ROOT)
    peak = 0
    deadline = time.monotonic() + 600
    try:
        while process.poll() is None:
            peak = max(peak, _peak_mib(process.pid))
            if peak > ceiling_mib:
                pytest.fail(f"the job took {peak} MiB, over its ceiling of {ceiling_mib} MiB")
            if time.monotonic() > deadline:
                pytest.fail("the job did not finish in 10 minutes")
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == 0
    return json.loads((out / "summaries.json").read_text()), peak


def _peak_mib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def typed_copy(table: pa.Table, folder: Path) -> Path:
    """The table as ingest's typed copy: written by DuckDB with the copy's options."""
    raw, copy = folder / "raw.parquet", folder / "data.parquet"
    pq.write_table(table, raw)
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet('{raw}')) TO '{copy}' ({PARQUET_COPY_OPTIONS})"
    )
    return copy


def wide_frame(columns: int) -> pd.DataFrame:
    rng = np.random.default_rng(columns)
    frame = pd.DataFrame(rng.normal(10.0, 3.0, (ROWS, columns)))
    frame.columns = [f"c{i}" for i in range(columns)]
    frame["c0"] = [1.0, 2.0, 3.0, 4.0, 100.0]  # an outlier by both rules
    frame.loc[2, "c1"] = np.nan  # NaN counts as null
    return frame


def expected_flags(frame: pd.DataFrame, method: str, k: float) -> set[tuple[int, str]]:
    """(1-based row, column) of every value flagged, as scipy/pandas compute the rules."""
    if method == "zscore":
        score = (frame - frame.mean()) / frame.std(ddof=0)
        flagged = score.abs() > k
    else:
        q1, q3 = frame.quantile(0.25), frame.quantile(0.75)
        iqr = q3 - q1
        # IQR = 0 flags every value off the quartile; only a constant column flags nothing.
        flagged = ((frame < q1 - k * iqr) | (frame > q3 + k * iqr)) & (frame.nunique() > 1)
    rows, columns = np.nonzero(flagged.to_numpy())
    return {(int(r) + 1, frame.columns[c]) for r, c in zip(rows, columns, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("columns", [3000, 10000])
def test_thousands_of_columns_stay_within_the_budget(tmp_path: Path, columns: int) -> None:
    frame = wide_frame(columns)
    table = pa.table(
        {
            name: pa.array(frame[name].to_numpy(), mask=frame[name].isna().to_numpy())
            for name in frame.columns
        }
    )
    parquet = typed_copy(table, tmp_path)
    # At 10,000 columns an anomalies step takes ~12 s (planning ~1 ms a column); the z-score
    # shares the iqr's path, so it runs at 3,000 only.
    zscore = [{"processor": "anomalies", "params": {"method": "zscore", "threshold": 1.5}}]
    steps: list[dict[str, Any]] = [
        {"processor": "metrics"},
        *(zscore if columns <= 3000 else []),
        {"processor": "anomalies", "params": {"method": "iqr"}},
        {
            "processor": "normalize",
            "params": {
                "fill_nulls": {"strategy": "median"},
                "scale": {"method": "minmax"},
                "output_format": "csv",
            },
        },
    ]
    summaries, peak = run_watched(parquet, tmp_path / "out", steps, WIDE_CEILING_MIB)
    print(f"{columns} columns: peak {peak} MiB")

    metrics, iqr = summaries[0], summaries[-2]
    assert (metrics["row_count"], metrics["column_count"]) == (ROWS, columns)
    assert metrics["duplicate_rows"] == int(frame.duplicated().sum()) == 0
    for name in CHECKED:
        got, values = metrics["columns"][name], frame[name]
        assert got["null_count"] == int(values.isna().sum())
        assert (got["min"], got["max"]) == (values.min(), values.max())
        for key, want in [
            ("mean", values.mean()),
            ("std", values.std(ddof=1)),
            ("p25", values.quantile(0.25)),
            ("p50", values.median()),
            ("p75", values.quantile(0.75)),
        ]:
            assert got[key] == pytest.approx(want, rel=1e-12), (name, key)

    rules = [("iqr", len(steps) - 2, iqr)]
    if columns <= 3000:
        rules.append(("zscore", 1, summaries[1]))
    for method, index, summary in rules:
        k = 1.5
        artifact = pd.read_csv(tmp_path / "out" / f"step-{index}" / "anomalies.csv")
        got = set(zip(artifact["row_number"], artifact["column"], strict=True))
        assert got == expected_flags(frame, method, k) and (5, "c0") in got
        assert summary["total"] == len(got)
        scores = artifact[artifact["column"] == "c0"]["score"].tolist()
        if method == "zscore":
            c0 = frame["c0"]
            assert scores == pytest.approx([(100.0 - c0.mean()) / c0.std(ddof=0)], rel=1e-12)

    normalized = pd.read_csv(tmp_path / "out" / f"step-{len(steps) - 1}" / "normalized.csv")
    filled = frame.fillna(frame.median())
    want = (filled - filled.min()) / (filled.max() - filled.min())
    assert list(normalized.columns) == list(frame.columns)
    assert np.allclose(normalized.to_numpy(), want.to_numpy(), rtol=1e-12, atol=1e-15)


INFLATING_ROWS = 50_000_000
RUN = 50_000  # k repeats each of 0..999 this many times, in order


def test_compressed_data_that_inflates_stays_within_the_budget(tmp_path: Path) -> None:
    parquet = tmp_path / "data.parquet"
    duckdb.connect().execute(
        f"COPY (SELECT 42::BIGINT AS x, (i // {RUN})::BIGINT AS k FROM range({INFLATING_ROWS})"
        f" t(i)) TO '{parquet}' ({PARQUET_COPY_OPTIONS})"
    )
    assert parquet.stat().st_size < 1024**2  # 50M rows in under 1 MiB
    steps: list[dict[str, Any]] = [
        {"processor": "metrics"},
        {"processor": "anomalies", "params": {"method": "zscore"}},
        {"processor": "anomalies", "params": {"method": "iqr"}},
        {
            "processor": "normalize",
            "params": {
                "fill_nulls": {"strategy": "median"},
                "scale": {"method": "minmax"},
                "output_format": "parquet",
            },
        },
    ]
    summaries, peak = run_watched(parquet, tmp_path / "out", steps, INFLATING_CEILING_MIB)
    print(f"{INFLATING_ROWS:,} rows: peak {peak} MiB")
    metrics, zscore, iqr, normalize = summaries

    n = INFLATING_ROWS
    assert (metrics["row_count"], metrics["duplicate_rows"]) == (n, n - 1000)
    x = metrics["columns"]["x"]
    assert (x["min"], x["max"], x["mean"], x["std"], x["distinct_count"]) == (42, 42, 42.0, 0.0, 1)
    assert (x["p25"], x["p50"], x["p75"]) == (42.0, 42.0, 42.0)
    assert x["histogram"]["counts"] == [0, 0, 0, 0, 0, n, 0, 0, 0, 0]

    # k: the values 0..999, each RUN times, in order (so the i-th smallest is i // RUN).
    k = metrics["columns"]["k"]
    squares = RUN * sum((Fraction(v) - Fraction(999, 2)) ** 2 for v in range(1000))
    assert (k["min"], k["max"], k["mean"], k["distinct_count"]) == (0, 999, 499.5, 1000)
    assert k["std"] == pytest.approx(math.sqrt(squares / (n - 1)), rel=1e-12)
    for key, q in [("p25", 0.25), ("p50", 0.5), ("p75", 0.75)]:
        position = (n - 1) * q  # numpy's linear method
        low = math.floor(position)
        a, b = low // RUN, (low + 1) // RUN
        assert k[key] == pytest.approx(a + (position - low) * (b - a), rel=1e-12), key
    counts, edges = np.histogram(np.arange(1000), bins=10)
    assert k["histogram"]["counts"] == (counts * RUN).tolist()
    assert k["histogram"]["edges"] == pytest.approx(edges.tolist(), rel=1e-12)

    assert zscore["total"] == 0 and "note" in zscore["columns"]["x"]  # constant: no scale
    assert zscore["columns"]["k"]["std"] == pytest.approx(math.sqrt(squares / n), rel=1e-12)
    assert iqr["total"] == 0 and iqr["columns"]["k"]["iqr"] == k["p75"] - k["p25"]
    assert normalize["rows_out"] == n and normalize["filled"]["k"]["value"] == k["p50"]
    out = tmp_path / "out" / "step-3" / "normalized.parquet"
    written = duckdb.connect().execute(
        f"SELECT count(*), min(x), max(x), min(k), max(k), sum(k) FROM '{out}'"
    )
    assert written.fetchone() == (n, 0.0, 0.0, 0.0, 1.0, pytest.approx(n / 2, rel=1e-9))
