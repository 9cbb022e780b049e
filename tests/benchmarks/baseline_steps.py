"""One step of the comparison baselines, run as its own process so it has its own peak RSS.

    python -m tests.benchmarks.baseline_steps STEP SOURCE OUTPUT

Steps `pandas-metrics`, `pandas-zscore`, `pandas-iqr` and `pandas-normalize` do what a small
hand-written pandas service does for each of Assay's job steps: `pd.read_csv` the uploaded
CSV, compute, write the artifact. `duckdb-csv-to-parquet` and `duckdb-parquet-to-csv` are
the floors for Assay's ingest and job: a bare DuckDB COPY each.

Prints one JSON object on stdout: `seconds` (the work, without interpreter start-up and
imports, as a long-running service would have them loaded), `cpu_seconds` (user + system
time of that work), `read_seconds` (the pd.read_csv part, pandas steps only), `peak_rss`
(bytes, this process's ru_maxrss, imports included) and `detail` (counts to check both
sides did the same work). Used by jobs_vs_pandas.
"""

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLOATS = [f"f{i}" for i in range(6)]
ZSCORE_THRESHOLD = 3.0
IQR_K = 1.5
# The floors' DuckDB budget: the worker's default memory budget.
DUCKDB_MEMORY_LIMIT = "1GB"

Detail = dict[str, Any]


def _read_csv(source: Path) -> tuple[Any, float]:
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(source, parse_dates=["at"])
    return frame, time.perf_counter() - started


def pandas_metrics(source: Path, output: Path) -> tuple[Detail, float]:
    import numpy as np

    df, read_seconds = _read_csv(source)
    numeric = df.select_dtypes("number")
    text = df.select_dtypes(exclude=["number", "datetime"])
    profile = {
        "describe": df.describe(include="all"),
        "quantiles": numeric.quantile([0.25, 0.5, 0.75]),
        "nunique": df.nunique(),
        "nulls": df.isna().sum(),
        "duplicates": int(df.duplicated().sum()),
        "top_values": {c: text[c].value_counts().head(10) for c in text.columns},
        "histograms": {
            c: np.histogram(numeric[c].dropna().to_numpy(), bins=10) for c in numeric.columns
        },
    }
    output.write_text(
        json.dumps(
            {
                "row_count": len(df),
                "duplicate_rows": profile["duplicates"],
                "null_count": {k: int(v) for k, v in profile["nulls"].items()},
                "distinct_count": {k: int(v) for k, v in profile["nunique"].items()},
                "describe": profile["describe"].to_json(default_handler=str),
            }
        )
    )
    return {"rows": len(df), "duplicate_rows": profile["duplicates"]}, read_seconds


def _write_flagged(df: Any, scores: Any, mask: Any, output: Path) -> Detail:
    """Flagged values in Assay's long form: row_number, column, value, score."""
    import numpy as np
    import pandas as pd

    parts, counts = [], {}
    for j, column in enumerate(FLOATS):
        rows = np.flatnonzero(mask[:, j])
        counts[column] = len(rows)
        parts.append(
            pd.DataFrame(
                {
                    "row_number": rows + 1,
                    "column": column,
                    "value": df[column].to_numpy()[rows],
                    "score": scores[rows, j],
                }
            )
        )
    pd.concat(parts, ignore_index=True).to_csv(output, index=False)
    return {"flagged": counts, "total": sum(counts.values())}


def pandas_zscore(source: Path, output: Path) -> tuple[Detail, float]:
    import numpy as np
    from scipy import stats

    df, read_seconds = _read_csv(source)
    scores = np.asarray(stats.zscore(df[FLOATS].to_numpy(), nan_policy="omit"))
    with np.errstate(invalid="ignore"):
        mask = np.abs(scores) > ZSCORE_THRESHOLD
    return _write_flagged(df, scores, mask, output), read_seconds


def pandas_iqr(source: Path, output: Path) -> tuple[Detail, float]:
    import numpy as np

    df, read_seconds = _read_csv(source)
    values = df[FLOATS]
    q1, q3 = values.quantile(0.25), values.quantile(0.75)
    iqr = q3 - q1
    low, high = q1 - IQR_K * iqr, q3 + IQR_K * iqr
    mask = ((values < low) | (values > high)).to_numpy()
    # Score as Assay's: distance beyond the crossed fence in IQRs (negative below).
    scale = iqr.replace(0, np.nan)
    scores = np.where(values < low, (values - low) / scale, (values - high) / scale)
    return _write_flagged(df, scores, mask, output), read_seconds


def pandas_normalize(source: Path, output: Path) -> tuple[Detail, float]:
    df, read_seconds = _read_csv(source)
    filled = int(df[FLOATS].isna().sum().sum())
    df[FLOATS] = df[FLOATS].fillna(df[FLOATS].median())
    low, high = df[FLOATS].min(), df[FLOATS].max()
    df[FLOATS] = (df[FLOATS] - low) / (high - low)
    df.to_csv(output, index=False)
    return {"rows": len(df), "values_filled": filled}, read_seconds


def _duckdb(sql: str) -> None:
    import duckdb

    with duckdb.connect(":memory:", config={"memory_limit": DUCKDB_MEMORY_LIMIT}) as con:
        con.execute(sql)


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def duckdb_csv_to_parquet(source: Path, output: Path) -> tuple[Detail, float]:
    """The ingest floor: one COPY from the CSV (sniffed) to Parquet as Assay writes it."""
    from services.processing.datasets.ingest import (
        PARQUET_COPY_OPTIONS,  # here: pandas steps skip it
    )

    copy = f"COPY (SELECT * FROM read_csv({_lit(source)})) TO {_lit(output)}"
    _duckdb(f"{copy} ({PARQUET_COPY_OPTIONS})")
    return {"bytes": output.stat().st_size}, 0.0


def duckdb_parquet_to_csv(source: Path, output: Path) -> tuple[Detail, float]:
    """The job floor: read the Parquet copy once, write a CSV shaped like normalized.csv.

    The float columns are min-max scaled with their minimum and maximum from the Parquet
    footer, nulls as 0 (normalize fills them with the median instead), so the CSV holds the
    same kind of full-precision numbers in [0, 1] as normalized.csv and has its size
    within 1%, without computing any statistic from the data.
    """
    import duckdb

    src = f"read_parquet({_lit(source)})"
    with duckdb.connect(":memory:", config={"memory_limit": DUCKDB_MEMORY_LIMIT}) as con:
        bounds = dict(
            con.execute(
                "SELECT path_in_schema, [min(TRY_CAST(stats_min_value AS DOUBLE)),"
                " max(TRY_CAST(stats_max_value AS DOUBLE))]"
                f" FROM parquet_metadata({_lit(source)}) GROUP BY 1"
            ).fetchall()
        )
        scaled = ", ".join(
            f"(coalesce({c}, 0.0) - {bounds[c][0]!r}) / {bounds[c][1] - bounds[c][0]!r} AS {c}"
            for c in FLOATS
        )
        query = f"SELECT * REPLACE ({scaled}) FROM {src}"
        con.execute(f"COPY ({query}) TO {_lit(output)} (FORMAT csv, HEADER true)")
    return {"bytes": output.stat().st_size}, 0.0


STEPS: dict[str, Callable[[Path, Path], tuple[Detail, float]]] = {
    "pandas-metrics": pandas_metrics,
    "pandas-zscore": pandas_zscore,
    "pandas-iqr": pandas_iqr,
    "pandas-normalize": pandas_normalize,
    "duckdb-csv-to-parquet": duckdb_csv_to_parquet,
    "duckdb-parquet-to-csv": duckdb_parquet_to_csv,
}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in STEPS:
        sys.exit(f"usage: python -m tests.benchmarks.baseline_steps {{{'|'.join(STEPS)}}} IN OUT")
    step, source, output = STEPS[sys.argv[1]], Path(sys.argv[2]), Path(sys.argv[3])
    # Import the libraries before the clock starts: a service has them loaded already.
    if sys.argv[1].startswith("pandas"):
        import pandas  # noqa: F401
        import scipy.stats  # noqa: F401
    else:
        import duckdb  # noqa: F401
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    detail, read_seconds = step(source, output)
    seconds = time.perf_counter() - started
    cpu_seconds = _cpu_seconds() - cpu_started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "read_seconds": read_seconds,
                "peak_rss": peak_rss,
                "detail": detail,
            }
        )
    )


if __name__ == "__main__":
    main()
