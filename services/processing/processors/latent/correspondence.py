"""correspondence: multiple correspondence analysis (MCA) of categorical items, with prince
(prince 0.23, prince.MCA, the reference).

Items: every chosen column is categorical, whatever its type: its distinct values are its
categories, in sorted order (design.py); nulls follow `nulls` (drop_rows by default; fill:
the mode). MCA is correspondence analysis of the indicator matrix Z (one 0/1 column per
category, named "column=level").

The fit is prince.MCA(n_components, n_iter=10, random_state=0, engine="sklearn",
one_hot=True, copy=False).fit(frame) on a pandas frame of the items' 0-based level codes,
whose one-hot encoding is Z in the same column order (prince sorts a column's values, the
codes follow the sorted levels): prince's defaults but for the seed, fixed so that its
randomized SVD gives the same result every time, and copy=False, which spares a copy of Z
without changing a value.

Summary:
- eigenvalues: the principal inertias (prince's eigenvalues_: squared singular values of
  the standardised residuals), explained_inertia: each over the total inertia (prince's
  percentage_of_variance_ / 100), total_inertia ((categories - items) / items);
- column_coordinates: per category, its principal coordinate on each component (prince's
  column_coordinates), and column_contributions: its share of each component's inertia
  (prince's column_contributions_, summing to 1 per component); keyed "column=level".

Artifact row_coordinates.parquet: row (1-based dataset row) and component_1..component_k,
each row's principal coordinates: the row's profile (1/items at each of its categories)
times diag(column masses)^-1/2 V', prince's row_coordinates, computed from the level codes
(a sum over the items) instead of a second one-hot matrix.

Component signs are the SVD's (prince does not flip them): compare up to sign.
"""

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import ProcessorInputError, StepInput, StepOutput
from services.processing.processors.columns import reject_duplicate_columns, select_columns
from services.processing.processors.latent.artifacts import row_columns, write_parquet
from services.processing.processors.latent.design import (
    DesignMatrix,
    Item,
    NullPolicy,
    is_scalar,
    read_design,
)

ARTIFACT = "row_coordinates.parquet"
MAX_COMPONENTS = 100
SEED = 0  # prince's randomized SVD


class CorrespondenceParams(BaseModel):
    """Multiple correspondence analysis of categorical items (prince.MCA)."""

    model_config = ConfigDict(extra="forbid", title="correspondence")
    columns: list[str] = Field(
        min_length=2, description="The categorical items: any column, its values as categories."
    )
    n_components: int = Field(default=2, ge=1, le=MAX_COMPONENTS)
    nulls: NullPolicy = Field(
        default="drop_rows", description="Rows with a null: drop_rows, fail, or fill (the mode)."
    )
    _unique = field_validator("columns")(reject_duplicate_columns)


def check_columns(params: CorrespondenceParams, columns: list[ColumnInfo]) -> None:
    """Listed columns must exist and hold scalar values."""
    select_columns(
        params.columns,
        columns,
        field="columns",
        accept=is_scalar,
        kind="a number, boolean, text, date or time",
    )


def run(step: StepInput, params: CorrespondenceParams) -> StepOutput:
    """Read the items' codes, fit prince's MCA, write the row coordinates."""
    step.report(0.0, "loading prince")
    import pandas as pd  # the worker's imports only: the API never loads them
    import prince

    selected = select_columns(params.columns, step.columns, field="columns", accept=is_scalar)
    items = [Item(c.name, "categorical") for c in selected]
    k = params.n_components
    design = read_design(
        step,
        items,
        nulls=params.nulls,
        encoding="codes",
        extra_bytes_per_row=lambda levels: _fit_bytes_per_row(items, levels, k),
        end=0.2,
    )
    sizes = [len(design.levels[item.column]) for item in items]
    categories, rows = sum(sizes), len(design.rows)
    if k > min(rows, categories) - 1:
        raise ProcessorInputError(
            f"{k} components need more rows and categories: MCA has at most"
            f" min(rows, categories) - 1 = {min(rows, categories) - 1} here"
        )
    frame = pd.DataFrame(
        {item.column: design.values[:, j].astype(np.int64) for j, item in enumerate(items)}
    )
    step.report(0.2, f"fitting {k} components")
    model = prince.MCA(n_components=k, random_state=SEED, copy=False)
    model.fit(frame)
    del frame
    step.report(0.8, "fitted")
    names = [f"{item.column}={level}" for item in items for level in design.levels[item.column]]
    U = np.asarray(model.svd_.U)
    V = np.asarray(model.svd_.V)
    col_masses = model.col_masses_.to_numpy()
    coordinates = _column_coordinates(design, U, sizes)
    contributions = model.column_contributions_.to_numpy()
    eigenvalues = np.asarray(model.eigenvalues_, dtype=float)
    summary: dict[str, Any] = {
        "n_components": k,
        "eigenvalues": eigenvalues.tolist(),
        "explained_inertia": (np.asarray(model.percentage_of_variance_) / 100).tolist(),
        "total_inertia": float(model.total_inertia_),
        "column_coordinates": {name: coordinates[j].tolist() for j, name in enumerate(names)},
        "column_contributions": {name: contributions[j].tolist() for j, name in enumerate(names)},
        "rows": rows,
        "data": design.summary(),
    }
    row_coordinates = _row_coordinates(design, V, col_masses, sizes)
    columns: dict[str, np.ndarray | pa.Array] = row_columns(step, design.rows)
    for c in range(k):
        columns[f"component_{c + 1}"] = np.ascontiguousarray(row_coordinates[:, c])
    artifact = write_parquet(step, ARTIFACT, columns, start=0.9, end=1.0)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _offsets(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)


def _row_coordinates(
    design: DesignMatrix, V: np.ndarray, col_masses: np.ndarray, sizes: list[int]
) -> np.ndarray:
    """Z/items diag(c)^-1/2 V' as a sum over the items of their categories' rows of it."""
    per_category = (V.T / np.sqrt(col_masses)[:, None]) / len(sizes)  # (categories, k)
    out = np.zeros((design.values.shape[0], V.shape[0]))
    for j, offset in enumerate(_offsets(sizes)):
        out += per_category[offset + design.values[:, j].astype(np.intp)]
    return out


def _column_coordinates(design: DesignMatrix, U: np.ndarray, sizes: list[int]) -> np.ndarray:
    """prince's (Z' / column sums) diag(r)^-1/2 U: every row's mass is 1/rows, so a
    category's coordinate is sqrt(rows) times the mean of U over the rows holding it."""
    rows, k = U.shape
    out = np.zeros((sum(sizes), k))
    for j, (offset, size) in enumerate(zip(_offsets(sizes), sizes, strict=True)):
        codes = design.values[:, j].astype(np.intp)
        counts = np.bincount(codes, minlength=size)
        for c in range(k):
            sums = np.bincount(codes, weights=U[:, c], minlength=size)
            out[offset : offset + size, c] = np.sqrt(rows) * sums / counts
    return out


def _fit_bytes_per_row(items: list[Item], levels: dict[str, list[str]], k: int) -> int:
    """Bytes prince holds per row beyond the codes (measured with tracemalloc on prince 0.23:
    6.2 rows of Z plus ~40 values at its peak): its dense indicator matrix, the correspondence
    matrix, the standardised residuals and their temporaries, the frame of codes, the row
    masses and contributions (pandas), then the row coordinates and artifact columns."""
    categories = sum(len(levels[i.column]) for i in items)
    return 8 * (7 * categories + 4 * len(items) + 8 * k + 24)
