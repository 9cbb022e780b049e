"""Artifact tables of the latent processors: numpy columns written as Parquet by DuckDB."""

import uuid

import numpy as np
import pyarrow as pa

from services.processing.processors.arrays import to_arrow
from services.processing.processors.base import ArtifactFile, StepInput, artifact_name
from services.processing.processors.duck import connect
from services.processing.processors.output import copy_to_file

PARQUET_TYPE = "application/vnd.apache.parquet"


def write_parquet(
    step: StepInput,
    base: str,
    columns: dict[str, np.ndarray],
    *,
    start: float,
    end: float,
) -> ArtifactFile:
    """Write equal-length 1-d numpy columns as the artifact `base` (zstd Parquet)."""
    name = artifact_name(base, step.artifact_suffix)
    path = step.output_dir / name
    # Arrow arrays over the numpy buffers: no copy, and no pandas import.
    table = pa.table({key: to_arrow(values) for key, values in columns.items()})
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
