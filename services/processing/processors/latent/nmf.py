"""nmf: non-negative matrix factorisation X ~ W H of non-negative items, with scikit-learn's
NMF (sklearn.decomposition.NMF, scikit-learn 1.9, the reference).

Items: number columns are taken as they are and must not be negative (a negative value is
an error naming the column and row); boolean columns are 0/1; text, date and time columns
are one-hot encoded, a 0/1 column per level named "column=level" (design.py). Nulls follow
`nulls` (design.py: drop_rows by default; fill: a number's mean, otherwise the mode).

The fit is NMF(n_components, init=init, max_iter=max_iter, random_state=seed) with
scikit-learn's defaults otherwise (coordinate descent on the Frobenius loss, tol 1e-4, no
regularisation), fitted by fit_transform on the matrix: the same W, H and error as on a
pandas frame of the same values. `init` None is scikit-learn's default: "nndsvda" when
n_components <= min(rows, matrix columns), else "random".

Summary: reconstruction_error (scikit-learn's reconstruction_err_: ||X - WH|| Frobenius),
relative_error (that over ||X||), n_iter, converged (n_iter < max_iter), and `components`:
per component (in scikit-learn's order), the loading of each matrix column (H's row),
keyed by matrix column name. Artifact weights.parquet: row (1-based dataset row) and
weight_1..weight_k (W).

The fit is one library call: progress is reported before and after it, and a cancel during
it stops the child process the job runs in (the processor is isolated).
"""

import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import ProcessorInputError, StepInput, StepOutput
from services.processing.processors.columns import (
    is_numeric,
    reject_duplicate_columns,
    select_columns,
)
from services.processing.processors.latent.artifacts import row_columns, write_parquet
from services.processing.processors.latent.design import (
    Item,
    NullPolicy,
    is_scalar,
    read_design,
)

ARTIFACT = "weights.parquet"
MAX_COMPONENTS = 200


class NmfParams(BaseModel):
    """Non-negative matrix factorisation of non-negative items (scikit-learn NMF)."""

    model_config = ConfigDict(extra="forbid", title="nmf")
    columns: list[str] = Field(
        min_length=1,
        description="Number columns (0 or more), booleans (0/1) and text columns (one-hot).",
    )
    n_components: int = Field(ge=1, le=MAX_COMPONENTS)
    init: Literal["random", "nndsvd", "nndsvda", "nndsvdar"] | None = Field(
        default=None,
        description="scikit-learn's init; default: nndsvda when n_components <= min(rows,"
        " columns), else random.",
    )
    max_iter: int = Field(default=200, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="scikit-learn's random_state.")
    nulls: NullPolicy = Field(
        default="drop_rows",
        description="Rows with a null: drop_rows, fail, or fill (mean of a number, mode of"
        " others).",
    )
    _unique = field_validator("columns")(reject_duplicate_columns)


def check_columns(params: NmfParams, columns: list[ColumnInfo]) -> None:
    """Listed columns must exist and be numbers, booleans, text, dates or times."""
    select_columns(
        params.columns,
        columns,
        field="columns",
        accept=is_scalar,
        kind="a number, boolean, text, date or time",
    )


def item_of(column: ColumnInfo) -> Item:
    """Numbers as they are (never negative), booleans 0/1, anything else one-hot."""
    if is_numeric(column):
        return Item(column.name, "numeric", nonnegative=True)
    return Item(column.name, "binary" if column.type == "boolean" else "categorical")


def run(step: StepInput, params: NmfParams) -> StepOutput:
    """Read the items, factorise them, write W."""
    step.report(0.0, "loading scikit-learn")
    from sklearn.decomposition import NMF  # the worker's import only: the API never loads it
    from sklearn.exceptions import ConvergenceWarning

    selected = select_columns(params.columns, step.columns, field="columns", accept=is_scalar)
    k = params.n_components
    items = [item_of(c) for c in selected]
    design = read_design(
        step,
        items,
        nulls=params.nulls,
        encoding="onehot",
        extra_bytes_per_row=lambda levels: _fit_bytes_per_row(items, levels, k),
        end=0.2,
    )
    X = design.values
    if k > min(X.shape) and params.init not in (None, "random"):
        raise ProcessorInputError(
            f"init {params.init!r} needs n_components <= min(rows, matrix columns)"
            f" = {min(X.shape)}; use init 'random' or fewer components"
        )
    step.report(0.2, f"fitting {k} components")
    model = NMF(
        n_components=k, init=params.init, max_iter=params.max_iter, random_state=params.seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weights = model.fit_transform(X)
    step.report(0.9, "fitted")
    norm = float(np.linalg.norm(X))
    error = float(model.reconstruction_err_)
    summary: dict[str, Any] = {
        "n_components": k,
        "reconstruction_error": error,
        "relative_error": error / norm if norm else None,
        "n_iter": int(model.n_iter_),
        "converged": int(model.n_iter_) < params.max_iter,
        "components": [
            {name: float(v) for name, v in zip(design.names, row, strict=True)}
            for row in model.components_
        ],
        "rows": len(design.rows),
        "data": design.summary(),
    }
    columns: dict[str, np.ndarray | pa.Array] = row_columns(step, design.rows)
    for c in range(k):
        columns[f"weight_{c + 1}"] = np.ascontiguousarray(weights[:, c])
    artifact = write_parquet(step, ARTIFACT, columns, start=0.9, end=1.0)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _fit_bytes_per_row(items: list[Item], levels: dict[str, list[str]], k: int) -> int:
    """Bytes scikit-learn's NMF holds per row beyond X (measured with tracemalloc on
    scikit-learn 1.9: two more copies of X's row and four n x k arrays at most)."""
    width = sum(len(levels[i.column]) if i.kind == "categorical" else 1 for i in items)
    return 8 * (2 * width + 5 * k + 2)
