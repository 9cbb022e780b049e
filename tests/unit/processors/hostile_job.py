"""Runs a job's steps on a Parquet copy, as the worker does; used by test_hostile_inputs.py in a
child process whose memory it watches.

    python -m tests.unit.processors.hostile_job PARQUET OUT_DIR BUDGET_MB STEPS_JSON

Writes OUT_DIR/summaries.json (one summary per step) and each step's files to OUT_DIR/step-N.
Every column of the file is numeric (integer or float), as the hostile datasets are.
"""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from schemas.domain.records import ColumnInfo, DatasetFormat
from schemas.settings import Settings
from services.processing.processors.base import StepInput
from services.processing.processors.numeric import CACHE_SHARE, ProfileCache
from services.processing.processors.registry import get_processor, validate_step
from workers.limits import compute_limits


def main() -> None:
    parquet, out, budget, steps = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
    )
    schema = pq.read_schema(parquet)
    columns = [
        ColumnInfo(
            name=f.name, type="integer" if str(f.type).startswith("int") else "float", null_count=0
        )
        for f in schema
    ]
    limits = compute_limits(Settings(_env_file=None, worker_memory_budget_mb=budget))
    profiles = ProfileCache(max_bytes=limits.batch_memory_bytes // CACHE_SHARE)
    summaries = []
    for index, step in enumerate(json.loads(steps)):
        processor = get_processor(step["processor"])
        assert processor is not None
        params = validate_step(step["processor"], step.get("params", {}), columns)
        folder = out / f"step-{index}"
        folder.mkdir(parents=True)
        output = processor.run(
            StepInput(
                parquet_path=parquet,
                columns=columns,
                dataset_format=DatasetFormat.csv,
                output_dir=folder,
                artifact_suffix="",
                report=lambda fraction, message: None,
                limits=limits,
                spill_dir=out,
                profiles=profiles,
            ),
            params,
        )
        summaries.append(output.summary)
    (out / "summaries.json").write_text(json.dumps(summaries))


if __name__ == "__main__":
    main()
