"""Generated item data with a known structure, and a StepInput over a Parquet copy of it."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from schemas.domain.records import DatasetFormat
from services.processing.processors.base import ComputeLimits, StepInput
from tests.unit.processors.conftest import columns_of

TableStep = Callable[..., StepInput]


def write_copy(table: pa.Table, path: Path) -> Path:
    """Write the table as ingest writes the typed copy: by DuckDB (which, unlike pyarrow, leaves
    a float column's min/max out of the statistics when it holds NaN)."""
    con = duckdb.connect()
    con.register("data", table)
    con.execute(f"COPY data TO '{path}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 61440)")
    con.close()
    return path


@pytest.fixture
def table_step(tmp_path: Path) -> TableStep:
    """StepInput for a pyarrow table written like the typed copy; keyword overrides."""
    counter = iter(range(1000))

    def factory(table: pa.Table, **overrides: Any) -> StepInput:
        n = next(counter)
        path = write_copy(table, tmp_path / f"data{n}.parquet")
        output_dir = tmp_path / f"step{n}"
        output_dir.mkdir()
        fields: dict[str, Any] = {
            "parquet_path": path,
            "columns": columns_of(table),
            "dataset_format": DatasetFormat.csv,
            "output_dir": output_dir,
            "artifact_suffix": "",
            "report": lambda fraction, message: None,
            "limits": ComputeLimits(threads=2),
        }
        fields.update(overrides)
        return StepInput(**fields)

    return factory


def planted_classes(
    rows: int, items: int, sizes: list[float], seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0/1 items from latent classes of these sizes: (data, true class, item probabilities).

    Each class answers "yes" with probability 0.85 on its own block of items and 0.15
    elsewhere, so the classes are well separated.
    """
    rng = np.random.default_rng(seed)
    k = len(sizes)
    probs = np.full((k, items), 0.15)
    for c in range(k):
        probs[c, c::k] = 0.85
    truth = rng.choice(k, size=rows, p=np.array(sizes) / sum(sizes))
    data = (rng.random((rows, items)) < probs[truth]).astype(np.int64)
    return data, truth, probs


class Recorder:
    """A progress callback that records the calls (and checks fractions never go back)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, message: str) -> None:
        if self.calls:
            assert fraction >= self.calls[-1][0] - 1e-12, (self.calls[-1], fraction, message)
        assert 0.0 <= fraction <= 1.0
        self.calls.append((fraction, message))
