"""count_anomalies against the plain-pandas way of computing it, side by side in one run.

    uv run python -m tests.benchmarks.count_anomalies [--rows N] [--groups G] [--resolution R]
        [--keep-data DIR] [--budget-mb MB] [--no-pandas] [--json out.json]

1. Generates (or reuses) a Parquet file written like Assay's typed copy (zstd, row groups of
   61,440): N events (default 5,000,000) at uniform instants over two years from Monday
   2023-01-02, G groups (default 50) of Zipf-like sizes, positions uniform over a
   30 x 28 km box (every position distinct: the worst case for a per-position H3 cache).
2. Assay: `count_anomalies` {weekly, group, h3 at R (default 8), 20 plots} run in a fresh
   process with the worker's limits for the budget (DuckDB 3/8 of it, numpy 1/2). Its time is
   run() alone, the libraries imported before (a worker that has run one such step has them);
   the import time is printed apart. Peak memory: the process's VmHWM, reset right before
   run(), so it is what the step needed on top of an idle process with the libraries loaded
   (and the same figure without the reset: the whole process).
   With --model, count_model on the same file too (daily counts per group on day_of_week, month
   and trend, negative binomial): the time counting the rows against the time fitting (as
   `tests.benchmarks.count_model` runs it).
3. pandas, in a fresh process, the way a short script does it: read_parquet, H3 row by row
   (DataFrame.apply), weekly counts by resample in groupby.apply per (group, cell) and per
   group, a groupby.apply per series for the baseline, scipy's p-values and linregress, the
   same CSV, Parquet and 20 plots (pyplot). Timed from the read, the libraries imported.

Prints both times, the ratio and peak memories, and the figures both sides found (series,
anomalies, significant trends: they agree).
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20260316
GENERATOR_VERSION = 1  # bump when the generated data changes, so cached files are remade
START = np.datetime64("2023-01-02T00:00:00")  # a Monday
DAYS = 730
CHUNK = 1_000_000
LAT0, LAT1, LON0, LON1 = 41.70, 41.97, -87.90, -87.56  # ~30 x 28 km
RECENT, THRESHOLD, MIN_EVENTS, PLOTS = 4, 0.05, 4, 20


def generate(path: Path, rows: int, groups: int) -> None:
    """The events file; the first N rows are the same whatever N is."""
    names = np.array([f"district_{i:02d}" for i in range(groups)])
    weights = 1.0 / np.arange(1, groups + 1) ** 0.7
    weights /= weights.sum()
    writer = None
    try:
        for first in range(0, rows, CHUNK):
            n = min(CHUNK, rows - first)
            rng = np.random.default_rng([SEED, first // CHUNK])
            seconds = rng.integers(0, DAYS * 86400, n)
            table = pa.table(
                {
                    "at": pa.array(START + seconds.astype("timedelta64[s]"), pa.timestamp("us")),
                    "district": pa.array(names[rng.choice(groups, n, p=weights)]),
                    "lat": pa.array(np.round(LAT0 + rng.random(n) * (LAT1 - LAT0), 6)),
                    "lon": pa.array(np.round(LON0 + rng.random(n) * (LON1 - LON0), 6)),
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=61_440)
    finally:
        if writer is not None:
            writer.close()


def peak_reset() -> None:
    """Start the kernel's peak-RSS count (VmHWM) again from the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    """The process's peak RSS since the last reset (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- Assay -------------------------------------------------------------------------------


def run_assay(data: Path, out: Path, resolution: int, budget_mb: int) -> dict[str, Any]:
    """count_anomalies in this process, timed after the libraries are imported."""
    started = time.perf_counter()
    import h3  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import scipy.stats  # noqa: F401

    from schemas.domain.records import ColumnInfo, DatasetFormat
    from services.processing.processors.base import ComputeLimits, StepInput
    from services.processing.processors.events import count_anomalies

    imported = time.perf_counter() - started
    meta = pq.read_schema(data)
    kinds = {"at": "timestamp", "district": "string", "lat": "float", "lon": "float"}
    columns = [ColumnInfo(name=n, type=kinds[n], null_count=0) for n in meta.names]
    timeline: list[tuple[float, str]] = []
    clock = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        if not timeline or timeline[-1][1] != message:
            timeline.append((time.perf_counter() - clock, message))

    step = StepInput(
        parquet_path=data,
        columns=columns,
        dataset_format=DatasetFormat.parquet,
        output_dir=out,
        artifact_suffix="",
        report=report,
        limits=ComputeLimits(
            memory_limit=f"{budget_mb * 3 // 8}MiB", batch_memory_bytes=budget_mb * 1024**2 // 2
        ),
    )
    params = count_anomalies.CountAnomaliesParams(
        timestamp_column="at",
        period="week",
        group_column="district",
        h3={"lat_column": "lat", "lon_column": "lon", "resolution": resolution},
        max_plots=PLOTS,
    )
    before = rss_mib()
    peak_reset()
    clock = time.perf_counter()
    result = count_anomalies.run(step, params)
    seconds = time.perf_counter() - clock
    s = result.summary
    ends = [t for t, _ in timeline]
    return {
        "seconds": seconds,
        "import_seconds": imported,
        "rss_before_mib": before,
        "peak_rss_mib": peak_mib(),
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "figures": {k: s[k] for k in ("series", "anomalies", "significant_trends", "events")},
        "phases": [
            {"message": m, "seconds": end - t}
            for (t, m), end in zip(timeline, [*ends[1:], seconds], strict=True)
        ],
        "artifacts": {a.name: a.path.stat().st_size for a in result.artifacts},
    }


# --- pandas ------------------------------------------------------------------------------


def run_pandas(data: Path, out: Path, resolution: int) -> dict[str, Any]:
    """The plain-pandas script: row-wise H3, resample per group, apply per series."""
    import h3
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from scipy import stats

    peak_reset()
    clock = time.perf_counter()
    marks: dict[str, float] = {}
    df = pd.read_parquet(data)
    df = df[df["at"].notna()]
    marks["read"] = time.perf_counter() - clock
    df["h3_cell"] = df.apply(lambda r: h3.latlng_to_cell(r["lat"], r["lon"], resolution), axis=1)
    marks["h3"] = time.perf_counter() - clock

    def weekly(frame: pd.DataFrame) -> pd.Series:
        return frame.set_index("at").resample("W-MON", label="left", closed="left").size()

    by_cell = df.groupby(["district", "h3_cell"])[["at"]].apply(weekly)
    by_group = df.groupby("district")[["at"]].apply(weekly)
    if isinstance(by_group, pd.DataFrame):  # every group over the same weeks: a wide frame
        by_group = by_group.stack()
    by_group = pd.concat({"": by_group}, names=["h3_cell"]).reorder_levels([1, 0, 2])
    counts = pd.concat([by_group, by_cell]).rename("count")
    marks["resample"] = time.perf_counter() - clock

    weeks = counts.index.get_level_values(2)
    last = weeks.max()
    if df["at"].max().normalize() < last + pd.Timedelta(days=6):
        last -= pd.Timedelta(weeks=1)  # a partial week is left out
    counts = counts[weeks <= last]
    recent_start = last - pd.Timedelta(weeks=RECENT - 1)

    def test(series: pd.Series) -> pd.DataFrame:
        s = series.droplevel([0, 1])
        s = s[s > 0]
        full = s.reindex(
            pd.date_range(min(s.index.min(), recent_start), last, freq="W-MON"), fill_value=0
        )
        base = full[full.index < recent_start]
        recent = full[full.index >= recent_start]
        mean = base.mean() if len(base) else np.nan
        var = base.var(ddof=1) if len(base) > 1 else np.nan
        # var > mean decided on the integers, as Assay does (one event in n weeks has a float
        # variance a rounding error away from its equal mean).
        n, s1, s2 = len(base), int(base.sum()), int((base.astype("int64") ** 2).sum())
        if n > 1 and n * s2 - s1 * s1 > s1 * (n - 1):
            r = mean**2 / (var - mean)
            p = stats.nbinom.sf(recent - 1, r, r / (r + mean))
            z = (recent - mean) / np.sqrt(var)
        else:
            p = stats.poisson.sf(recent - 1, mean)
            z = (recent - mean) / np.sqrt(mean)
        slope = trend_p = np.nan
        if recent.sum() >= MIN_EVENTS:
            fit = stats.linregress(np.arange(len(recent)), recent.to_numpy())
            slope, trend_p = fit.slope, fit.pvalue
        return pd.DataFrame(
            {
                "period": recent.index,
                "count": recent.to_numpy(),
                "expected": mean,
                "p_value": p,
                "z_score": z,
                "flagged": p < THRESHOLD,
                "slope": slope,
                "trend_p": trend_p,
            }
        )

    tested = counts.groupby(level=[0, 1]).apply(test)
    marks["test"] = time.perf_counter() - clock
    tested = tested.reset_index(level=2, drop=True).reset_index()
    tested["h3_cell"] = tested["h3_cell"].replace("", None)
    columns = ["district", "h3_cell", "period", "count", "expected", "p_value", "z_score"]
    tested[[*columns, "flagged"]].to_csv(out / "count_anomalies.csv", index=False)
    counts.reset_index().to_parquet(out / "count_series.parquet")
    series = tested.groupby(["district", "h3_cell"], dropna=False).agg(
        flags=("flagged", "sum"),
        trend_p=("trend_p", "first"),
        min_p=("p_value", "min"),
    )
    significant = series[(series["flags"] > 0) | (series["trend_p"] < THRESHOLD)]
    for i, (key, _) in enumerate(significant.sort_values("min_p").head(PLOTS).iterrows()):
        cell = key[1] if isinstance(key[1], str) else ""
        history = counts.loc[(key[0], cell)]
        fig, ax = plt.subplots(figsize=(9, 3.6))
        ax.plot(history.index, history.to_numpy())
        ax.axvspan(recent_start, last, alpha=0.2)
        fig.savefig(out / f"count_plot_{i + 1:03d}.png")
        plt.close(fig)
    seconds = time.perf_counter() - clock
    trends = series["trend_p"] < THRESHOLD
    return {
        "seconds": seconds,
        "peak_rss_mib": peak_mib(),
        "phases": marks,
        "figures": {
            "series": len(series),
            "anomalies": int(tested["flagged"].sum()),
            "significant_trends": int(trends.sum()),
            "events": int(counts.sum() // 2),
        },
    }


# --- the run -----------------------------------------------------------------------------


def child(kind: str, data: Path, resolution: int, budget_mb: int) -> dict[str, Any]:
    """Run one side in a fresh process; its JSON result."""
    with tempfile.TemporaryDirectory(prefix=f"count-{kind}-") as out:
        command = [sys.executable, "-m", "tests.benchmarks.count_anomalies", "--child", kind]
        command += ["--data", str(data), "--out", out, "--resolution", str(resolution)]
        command += ["--budget-mb", str(budget_mb)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"{kind} failed ({done.returncode})")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--budget-mb", type=int, default=1024, help="ASSAY_WORKER_MEMORY_BUDGET_MB")
    parser.add_argument("--keep-data", type=Path, help="folder to generate the data in and reuse")
    parser.add_argument("--no-pandas", action="store_true", help="skip the pandas side")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--model", action="store_true", help="also time count_model on the events (daily)"
    )
    parser.add_argument("--child", choices=["assay", "pandas", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "assay":
            result = run_assay(args.data, args.out, args.resolution, args.budget_mb)
        elif args.child == "model":
            from tests.benchmarks.count_model import run_model  # it imports this module

            result = run_model(args.data, args.out, args.budget_mb)
        else:
            result = run_pandas(args.data, args.out, args.resolution)
        print(json.dumps(result, default=str))
        return

    folder = args.keep_data or Path(tempfile.mkdtemp(prefix="count-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"events-v{GENERATOR_VERSION}-{args.rows}-{args.groups}.parquet"
    if not data.exists():
        started = time.perf_counter()
        generate(data, args.rows, args.groups)
        print(f"generated {data} ({data.stat().st_size / 2**20:.0f} MiB) in"
              f" {time.perf_counter() - started:.1f} s")  # fmt: skip
    print(f"{args.rows:,} events, {args.groups} groups, weekly, H3 resolution {args.resolution};"
          f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    assay = child("assay", data, args.resolution, args.budget_mb)
    print(f"\nAssay count_anomalies: {assay['seconds']:.2f} s (imports before it:"
          f" {assay['import_seconds']:.2f} s); peak RSS {assay['peak_rss_mib']:.0f} MiB"
          f" (idle process with the libraries: {assay['rss_before_mib']:.0f} MiB; budget"
          f" {args.budget_mb} MiB)")  # fmt: skip
    for phase in assay["phases"]:
        print(f"  {phase['seconds']:7.2f} s  {phase['message']}")
    results = {"rows": args.rows, "groups": args.groups, "assay": assay}
    if args.model:
        model = child("model", data, args.resolution, args.budget_mb)
        results["count_model"] = model
        print(f"\ncount_model (daily per group, {model['n']:,} counts x"
              f" {model['coefficients']} coefficients, {model['method']}):"
              f" {model['seconds']:.2f} s; peak RSS {model['peak_rss_mib']:.0f} MiB")  # fmt: skip
        for name, seconds in model["phases"].items():
            print(f"  {seconds:7.2f} s  {name}")
    if not args.no_pandas:
        pandas = child("pandas", data, args.resolution, args.budget_mb)
        results["pandas"] = pandas
        print(f"\npandas: {pandas['seconds']:.2f} s; peak RSS {pandas['peak_rss_mib']:.0f} MiB")
        for name, at in pandas["phases"].items():
            print(f"  until {name}: {at:.2f} s")
        ratio = pandas["seconds"] / assay["seconds"]
        results["speedup"] = ratio
        print(f"\nspeed-up: {ratio:.1f}x (target >= 20x)")
        print(f"{'':20} {'Assay':>10} {'pandas':>10}")
        for key in ("series", "anomalies", "significant_trends"):
            print(f"{key:20} {assay['figures'][key]:>10} {pandas['figures'][key]:>10}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
