"""latent_classes through Assay's processor against a direct StepMix call on a pandas frame.

    uv run python -m tests.benchmarks.latent_classes [--rows N] [--items 20] [--classes 4]
        [--n-init 10] [--budget-mb 1024] [--repeat R] [--data DIR] [--json FILE]

1. Generates (or reuses, in --data) a Parquet file as ingest writes the typed copy (DuckDB,
   BIGINT columns): N rows of `items` 0/1 items from `classes` planted latent classes
   (sizes 0.4, 0.3, 0.2, 0.1, ...; P(yes) 0.85 on a class's own items, 0.15 elsewhere).
2. In a fresh process each, one after the other:
   - assay: `classes.run(StepInput, params)` on that file, the limits the worker derives from
     ASSAY_WORKER_MEMORY_BUDGET_MB (--budget-mb): it reads the items into a matrix, fits the
     n_init starts one at a time with progress, and writes memberships.parquet;
   - stepmix: `pd.read_parquet`, `StepMix(n_components, measurement="binary",
     n_init, random_state).fit(df)`, then the same figures (score, BIC, entropy,
     predict_proba_class) and the memberships written with `DataFrame.to_parquet`.
   Both fit the same starts (same seed): their log-likelihoods are printed side by side.
3. Prints wall time per phase and in all, CPU time (user + system: steadier than wall time
   on a shared machine), the peak resident memory of each process (the
   kernel's VmHWM) and its growth over the process at start, and the overhead ratios:
   Assay's total over the direct call's total and over its fit alone. Both processes import
   pandas, scikit-learn and StepMix before the clock starts (printed apart: seconds on a
   busy machine, paid once per job by a worker that does not preload them).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEED = 20260101


def generate(path: Path, rows: int, items: int, classes: int) -> None:
    """The planted data, written by DuckDB a million rows at a time."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    sizes = np.array([0.4, 0.3, 0.2, 0.1] if classes == 4 else [1.0] * classes)
    probs = np.full((classes, items), 0.15)
    for c in range(classes):
        probs[c, c::classes] = 0.85
    rng = np.random.default_rng(SEED)
    con = duckdb.connect()
    parts = []
    for first in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - first)
        truth = rng.choice(classes, size=n, p=sizes / sizes.sum())
        data = (rng.random((n, items)) < probs[truth]).astype(np.int64)
        parts.append(pa.table({f"i{j}": data[:, j] for j in range(items)}))
    table = pa.concat_tables(parts)
    con.register("data", table)
    tmp = path.with_suffix(".tmp")
    con.execute(f"COPY data TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 122880)")
    tmp.rename(path)


def cpu() -> float:
    """CPU seconds (user + system, every thread) this process has used."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory() -> dict[str, float]:
    """This process's resident and peak resident memory, MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def child_assay(args: argparse.Namespace) -> dict[str, Any]:
    """Assay's processor on the file, as the worker calls it."""
    t = time.perf_counter()
    import stepmix.stepmix  # noqa: F401 - imported before the clock starts, as below

    from schemas.domain.records import ColumnInfo, DatasetFormat
    from services.processing.processors.base import ComputeLimits, StepInput
    from services.processing.processors.latent import classes

    imports = time.perf_counter() - t
    start_memory = memory()["VmRSS"]
    started, cpu_started = time.perf_counter(), cpu()
    phases: dict[str, float] = {}
    clock = {"at": started}
    current = ["start"]

    def report(fraction: float, message: str) -> None:
        """Time per phase: each report ends the time of the phase before it."""
        phase = "fit" if "classes: start" in message else message.split(" ")[0]
        now = time.perf_counter()
        phases[current[0]] = phases.get(current[0], 0.0) + now - clock["at"]
        clock["at"], current[0] = now, phase

    budget = args.budget_mb * 1024**2
    columns = [ColumnInfo(name=f"i{j}", type="integer", null_count=0) for j in range(args.items)]
    out = Path(tempfile.mkdtemp(prefix="lca-assay-"))
    step = StepInput(
        parquet_path=Path(args.path),
        columns=columns,
        dataset_format=DatasetFormat.parquet,
        output_dir=out,
        artifact_suffix="",
        report=report,
        # As workers/limits.py: DuckDB 3/8 of the budget, numpy 1/2.
        limits=ComputeLimits(
            memory_limit=f"{budget * 3 // 8}B", batch_memory_bytes=budget // 2, threads=None
        ),
    )
    params = classes.LatentClassesParams(
        columns=[c.name for c in columns],
        n_classes=args.classes,
        n_init=args.n_init,
        seed=SEED % 2**32,
    )
    output = classes.run(step, params)
    total, cpu_total = time.perf_counter() - started, cpu() - cpu_started
    report(1.0, "end")
    phases.pop("start", None)
    s = output.summary
    return {
        "imports_seconds": imports,
        "seconds": total,
        "cpu_seconds": cpu_total,
        "phases": phases,
        "log_likelihood": s["log_likelihood"],
        "bic": s["bic"],
        "class_sizes": s["class_sizes"],
        "iterations": s["iterations"],
        "start_rss_mib": start_memory,
        **memory(),
    }


def child_stepmix(args: argparse.Namespace) -> dict[str, Any]:
    """StepMix called directly on a pandas frame of the file."""
    import warnings

    t = time.perf_counter()
    import numpy as np
    import pandas as pd
    from stepmix.stepmix import StepMix

    imports = time.perf_counter() - t
    start_memory = memory()["VmRSS"]
    started, cpu_started = time.perf_counter(), cpu()
    phases: dict[str, float] = {}
    t = time.perf_counter()
    df = pd.read_parquet(args.path)
    phases["read"] = time.perf_counter() - t
    t = time.perf_counter()
    model = StepMix(
        n_components=args.classes,
        measurement="binary",
        n_init=args.n_init,
        random_state=SEED % 2**32,
        progress_bar=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(df)
    phases["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    n = len(df)
    log_likelihood = model.score(df) * n
    bic = model.bic(df)
    model.relative_entropy(df)
    posterior = model.predict_proba_class(df)
    order = np.argsort(-model.weights_, kind="stable")
    phases["figures"] = time.perf_counter() - t
    t = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="lca-stepmix-")) / "memberships.parquet"
    frame = pd.DataFrame(posterior[:, order], columns=[f"posterior_{c + 1}" for c in order])
    frame.insert(0, "class", posterior[:, order].argmax(axis=1) + 1)
    frame.insert(0, "row", np.arange(1, n + 1))
    frame.to_parquet(out)
    phases["write"] = time.perf_counter() - t
    return {
        "imports_seconds": imports,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu() - cpu_started,
        "phases": phases,
        "log_likelihood": log_likelihood,
        "bic": bic,
        "class_sizes": sorted(model.weights_.tolist(), reverse=True),
        "iterations": int(model.n_iter_),
        "start_rss_mib": start_memory,
        **memory(),
    }


def run_child(kind: str, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.benchmarks.latent_classes", "--child", kind]
    command += ["--path", str(path), "--items", str(args.items), "--classes", str(args.classes)]
    command += ["--n-init", str(args.n_init), "--budget-mb", str(args.budget_mb)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr}")
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median total time, with the highest peak memory of all the runs."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["VmHWM"] = max(r["VmHWM"] for r in runs)
    middle["all_seconds"] = [r["seconds"] for r in runs]
    cpus = sorted(r["cpu_seconds"] for r in runs)
    middle["median_cpu_seconds"] = cpus[(len(cpus) - 1) // 2]
    return middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--budget-mb", type=int, default=1024)
    parser.add_argument("--data", type=Path, default=None, help="keep the generated file here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds; medians of the times, highest peak"
    )
    parser.add_argument("--child", choices=["assay", "stepmix"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_assay(args) if args.child == "assay" else child_stepmix(args)
        print(json.dumps(result))
        return

    folder = args.data or Path(tempfile.mkdtemp(prefix="lca-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"lca-{args.rows}x{args.items}-{args.classes}.parquet"
    if not path.exists():
        t = time.perf_counter()
        generate(path, args.rows, args.items, args.classes)
        print(f"generated {path} in {time.perf_counter() - t:.1f} s")
    print(
        f"{args.rows:,} rows x {args.items} binary items, {args.classes} classes,"
        f" n_init {args.n_init}; {os.cpu_count()} cores, {platform.python_version()}"
    )
    # Alternated, so that a slow spell of a shared machine hits both sides alike.
    rounds: dict[str, list[dict[str, Any]]] = {"assay": [], "stepmix": []}
    for n in range(args.repeat):
        for kind in ("assay", "stepmix") if n % 2 == 0 else ("stepmix", "assay"):
            rounds[kind].append(run_child(kind, args, path))
            last = rounds[kind][-1]
            print(
                f"  round {n + 1} {kind}: {last['seconds']:.1f} s, {last['cpu_seconds']:.1f} s CPU",
                flush=True,
            )
    results = {kind: _median(runs) for kind, runs in rounds.items()}
    for kind, r in results.items():
        phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["phases"].items())
        print(
            f"{kind:8s} {r['seconds']:8.1f} s (median of {len(r['all_seconds'])}),"
            f" {r['median_cpu_seconds']:.1f} s CPU"
            f"  peak {r['VmHWM']:7.0f} MiB"
            f" (+{r['VmHWM'] - r['start_rss_mib']:.0f} over start)"
            f"  LL {r['log_likelihood']:.6f}  iterations {r['iterations']}  [{phases}]"
            f"  (imports before: {r['imports_seconds']:.1f} s)"
        )
    assay, direct = results["assay"], results["stepmix"]
    ratio = assay["seconds"] / direct["seconds"]
    fit_ratio = assay["seconds"] / direct["phases"]["fit"]
    cpu_ratio = assay["median_cpu_seconds"] / direct["median_cpu_seconds"]
    memory_ratio = assay["VmHWM"] / direct["VmHWM"]
    same = abs(assay["log_likelihood"] - direct["log_likelihood"]) <= 1e-9 * abs(
        direct["log_likelihood"]
    )
    print(
        f"overhead: time {ratio:.3f}x the direct call (read + fit + figures + write),"
        f" {fit_ratio:.3f}x its fit alone; CPU time {cpu_ratio:.3f}x;"
        f" peak memory {memory_ratio:.2f}x;"
        f" same log-likelihood: {same}"
    )
    if args.json:
        summary = {"rows": args.rows, "items": args.items, "classes": args.classes}
        summary |= {"n_init": args.n_init, "budget_mb": args.budget_mb, "results": results}
        summary |= {"time_ratio": ratio, "fit_time_ratio": fit_ratio, "cpu_ratio": cpu_ratio}
        summary |= {"memory_ratio": memory_ratio, "rounds": rounds}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
