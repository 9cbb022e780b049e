"""count_model on millions of events: reading and aggregating the rows against the fit.

    uv run python -m tests.benchmarks.count_model [--rows N] [--groups G] [--period day]
        [--family negative_binomial|poisson] [--keep-data DIR] [--budget-mb MB] [--json out.json]

1. Generates (or reuses) the events file of `tests.benchmarks.count_anomalies` (N events,
   default 5,000,000, uniform over two years, G groups, default 50, of Zipf-like sizes; the
   same file with --keep-data): a Parquet file written like Assay's typed copy.
2. Runs `count_model` {daily counts per group on day_of_week, month and trend} through `run()`
   in a fresh process with the worker's limits for the budget (DuckDB 3/8 of it, numpy 1/2),
   the libraries imported before the clock starts (a worker that has run one such step has
   them; the import time is printed apart).
3. Splits the time by the step's own progress messages: reading and aggregating the rows
   (DuckDB's GROUP BY over the typed copy, the dense series, the design matrix), fitting
   (statsmodels on the aggregated table: Newton's steps, then the standard errors), writing
   `coefficients.csv` and `fitted.csv`. The issue's target: the fit dominates, never the read.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tests.benchmarks.count_anomalies import GENERATOR_VERSION, generate, peak_mib, peak_reset

FEATURES = ["day_of_week", "month", "trend"]
KINDS = {"at": "timestamp", "district": "string", "lat": "float", "lon": "float"}
# The step's progress messages, by the phase they open.
PHASES = {
    "counting events per period": "read",
    "building the design matrix": "read",
    "fitting the": "fit",
    "writing the tables": "write",
}


def run_model(
    data: Path, out: Path, budget_mb: int, period: str = "day", family: str = "negative_binomial"
) -> dict[str, Any]:
    """count_model on the events, per group: seconds reading, fitting and writing."""
    started = time.perf_counter()
    import statsmodels.discrete.discrete_model
    import statsmodels.genmod.generalized_linear_model  # noqa: F401

    from schemas.domain.records import ColumnInfo, DatasetFormat
    from services.processing.processors.base import ComputeLimits, StepInput
    from services.processing.processors.events import count_model

    imported = time.perf_counter() - started
    names = pq.read_schema(data).names
    columns = [ColumnInfo(name=n, type=KINDS[n], null_count=0) for n in names]
    # (wall seconds since run(), CPU seconds since run(), phase) when a phase opens
    marks: list[tuple[float, float, str]] = []
    clock, cpu = time.perf_counter(), time.process_time()

    def report(fraction: float, message: str) -> None:
        phase = next((p for prefix, p in PHASES.items() if message.startswith(prefix)), None)
        if phase is not None and (not marks or marks[-1][2] != phase):
            marks.append((time.perf_counter() - clock, time.process_time() - cpu, phase))

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
    params = count_model.CountModelParams(
        timestamp_column="at",
        period=period,
        group_column="district",
        features=FEATURES,
        family=family,
    )
    peak_reset()
    clock, cpu = time.perf_counter(), time.process_time()
    result = count_model.run(step, params)
    seconds, cpu_seconds = time.perf_counter() - clock, time.process_time() - cpu
    phases: dict[str, float] = {}
    phases_cpu: dict[str, float] = {}
    ends = [(wall, used) for wall, used, _ in marks[1:]] + [(seconds, cpu_seconds)]
    for (at, used_at, phase), (end, used_end) in zip(marks, ends, strict=True):
        phases[phase] = phases.get(phase, 0.0) + end - at
        phases_cpu[phase] = phases_cpu.get(phase, 0.0) + used_end - used_at
    s = result.summary
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "import_seconds": imported,
        "phases": phases,
        "phases_cpu": phases_cpu,
        "peak_rss_mib": peak_mib(),
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "events": s["events"],
        "n": s["n"],
        "coefficients": len(s["coefficients"]),
        "converged": s["converged"],
        "iterations": s["iterations"],
        "method": s["method"],
        "alpha": s["alpha"],
        "log_likelihood": s["log_likelihood"],
    }


def child(data: Path, budget_mb: int, period: str, family: str) -> dict[str, Any]:
    """run_model in a fresh process; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="count-model-") as out:
        command = [sys.executable, "-m", "tests.benchmarks.count_model", "--child"]
        command += ["--data", str(data), "--out", out, "--budget-mb", str(budget_mb)]
        command += ["--period", period, "--family", family]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"count_model failed ({done.returncode})")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def describe(model: dict[str, Any], budget_mb: int) -> list[str]:
    """The figures of one run, as printed."""
    phases, used = model["phases"], model["phases_cpu"]
    lines = [
        f"count_model ({model['n']:,} counts x {model['coefficients']} coefficients from"
        f" {model['events']:,} events, {model['method']}, {model['iterations']} iterations,"
        f" converged {model['converged']}): {model['seconds']:.2f} s"
        f" (CPU {model['cpu_seconds']:.2f} s; imports before it {model['import_seconds']:.2f} s);"
        f" peak RSS {model['peak_rss_mib']:.0f} MiB (budget {budget_mb} MiB)",
        "     wall s    CPU s",
        f"  {phases.get('read', 0.0):9.2f} {used.get('read', 0.0):8.2f}  reading and aggregating"
        " the rows (DuckDB)",
        f"  {phases.get('fit', 0.0):9.2f} {used.get('fit', 0.0):8.2f}  fitting (statsmodels, on"
        " the aggregated table)",
        f"  {phases.get('write', 0.0):9.2f} {used.get('write', 0.0):8.2f}  writing coefficients.csv"
        " and fitted.csv",
    ]
    share = phases.get("fit", 0.0) / model["seconds"] if model["seconds"] else 0.0
    read = phases.get("read", 0.0)
    fit = phases.get("fit", 0.0)
    cpu_ratio = used.get("fit", 0.0) / max(used.get("read", 0.0), 1e-9)
    lines.append(
        f"fit share {share:.0%}; fit / read {fit / max(read, 1e-9):.1f}x wall, {cpu_ratio:.1f}x"
        f" CPU (target: the fit dominates) -> {'yes' if fit > read else 'NO'}"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--period", choices=["hour", "day", "week"], default="day")
    parser.add_argument(
        "--family", choices=["negative_binomial", "poisson"], default="negative_binomial"
    )
    parser.add_argument("--budget-mb", type=int, default=1024, help="ASSAY_WORKER_MEMORY_BUDGET_MB")
    parser.add_argument("--keep-data", type=Path, help="folder to generate the data in and reuse")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_model(args.data, args.out, args.budget_mb, args.period, args.family)
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
    print(f"{args.rows:,} events, {args.groups} groups, {args.period} counts, {args.family};"
          f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    model = child(data, args.budget_mb, args.period, args.family)
    print("\n".join(describe(model, args.budget_mb)))
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "count_model": model}, indent=2))


if __name__ == "__main__":
    main()
