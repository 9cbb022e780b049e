"""Artifact tables of the latent processors: numpy columns written as Parquet by DuckDB."""

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.processing.datasets.common import LINE_COLUMN
from services.processing.processors.arrays import to_arrow
from services.processing.processors.base import ArtifactFile, StepInput, artifact_name
from services.processing.processors.duck import connect
from services.processing.processors.output import PARQUET_TYPE, copy_to_file


def write_parquet(
    step: StepInput,
    base: str,
    columns: dict[str, np.ndarray | pa.Array],
    *,
    start: float,
    end: float,
) -> ArtifactFile:
    """Write equal-length 1-d numpy (or Arrow) columns as the artifact `base` (zstd Parquet)."""
    name = artifact_name(base, step.artifact_suffix)
    path = step.output_dir / name
    # Arrow arrays over the numpy buffers: no copy, and no pandas import.
    table = pa.table(
        {
            key: values if isinstance(values, pa.Array) else to_arrow(values)
            for key, values in columns.items()
        }
    )
    view = f"artifact_{uuid.uuid4().hex}"
    with connect(step) as con:
        con.register(view, table)
        try:
            sha256 = copy_to_file(
                con,
                f"SELECT * FROM {view}",
                path,
                "FORMAT parquet, COMPRESSION zstd",
                step,
                f"writing {name}",
                start=start,
                end=end,
                columns=len(columns),
            )
        finally:
            con.unregister(view)
    return ArtifactFile(name=name, path=path, content_type=PARQUET_TYPE, sha256=sha256)


def row_columns(step: StepInput, rows: np.ndarray) -> dict[str, np.ndarray | pa.Array]:
    """`row` (1-based dataset rows) and `line` (where each starts in the uploaded file, null
    where unknown), the first columns of every per-row artifact, as anomalies.csv has them."""
    names = pq.read_schema(step.parquet_path).names
    if LINE_COLUMN in names and all(c.name != LINE_COLUMN for c in step.columns):
        lines = pq.read_table(step.parquet_path, columns=[LINE_COLUMN]).column(0)
        line = lines.take(pa.array(rows - 1)).combine_chunks()
    else:
        line = pa.nulls(len(rows), pa.int64())
    return {"row": rows, "line": line}
