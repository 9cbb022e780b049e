"""factor_analysis: exploratory factor analysis of number or 0/1 items, psych-style
(R's psych::fa and stats::factanal are the references; no maintained Python library fits
all of it with scikit-learn 1.9: factor_analyzer 0.5.1 calls an argument scikit-learn 1.8
removed).

Items: correlation "pearson" takes number and boolean columns as numbers; "tetrachoric"
takes 0/1 items (number columns must hold only 0 and 1, booleans are 0/1). Nulls follow
`nulls` (design.py: drop_rows by default; fill: a number's mean, a 0/1 item's mode).

1. The correlation matrix R: Pearson, or tetrachoric (factoring.py: psych's tetrachoric,
   smoothed as psych's cor.smooth when not positive definite: `smoothed` says so).
2. Extraction of n_factors from R (factoring.py): minres (psych's fa(fm="minres"): least
   squares on the off-diagonal residuals; the fixed point of iterated principal axis
   factoring), or ml (R's stats::factanal; the same maximum-likelihood solution as
   scikit-learn's FactorAnalysis on the standardised data, up to rotation).
3. Rotation (rotations.py): none, varimax (Kaiser-normalised, R's stats::varimax), promax
   (stats::promax, m = 4) or oblimin (GPArotation's quartimin). Oblique rotations report
   the pattern loadings and `factor_correlations`.
4. Factors are ordered by the variance they explain, largest first, and each turned so its
   loadings sum to 0 or more (psych's fa does both).

Summary: loadings {column: [per factor]}, communalities {column: h2 = row sum of the
unrotated squared loadings, = diag(P Phi P')}, uniquenesses {column: 1 - h2},
variance_explained {ss_loadings (psych's: column sums of squared loadings, or
diag(Phi P'P) when oblique), proportion (of the items' total variance), cumulative},
factor_correlations (oblique rotations), objective (the minimised criterion), converged,
iterations, correlation (and `smoothed`), rows.

Artifact scores.parquet: row (1-based dataset row) and factor_1..factor_n, regression
(Thurstone) scores as psych's factor.scores: Z R^-1 S, with Z the items standardised
(ddof 1) and S = P Phi the structure matrix.

Progress is reported between the stages, and after each pair of tetrachoric correlations.
A cancel while scipy optimises stops the child process the job runs in (isolated).
"""

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
from services.processing.processors.latent import factoring, rotations
from services.processing.processors.latent.artifacts import row_columns, write_parquet
from services.processing.processors.latent.design import Item, NullPolicy, read_design

ARTIFACT = "scores.parquet"
MAX_FACTORS = 50
ITEM_KINDS = "a number or boolean"


class FactorAnalysisParams(BaseModel):
    """Exploratory factor analysis (minres or ML; varimax, promax or oblimin rotation)."""

    model_config = ConfigDict(extra="forbid", title="factor_analysis")
    columns: list[str] = Field(
        min_length=3,
        description="Number and boolean columns (0/1 items for tetrachoric correlations).",
    )
    n_factors: int = Field(ge=1, le=MAX_FACTORS)
    rotation: Literal["none", "varimax", "promax", "oblimin"] = Field(
        default="oblimin", description="psych's default is oblimin."
    )
    method: Literal["minres", "ml"] = Field(
        default="minres",
        description="minres: least squares on the off-diagonal residuals (psych's default);"
        " ml: maximum likelihood (R's factanal).",
    )
    correlation: Literal["pearson", "tetrachoric"] = Field(
        default="pearson", description="tetrachoric: for 0/1 items."
    )
    nulls: NullPolicy = Field(
        default="drop_rows",
        description="Rows with a null: drop_rows, fail, or fill (mean of a number, mode of a"
        " 0/1 item).",
    )
    _unique = field_validator("columns")(reject_duplicate_columns)


def accept(column: ColumnInfo) -> bool:
    """Numbers and booleans."""
    return is_numeric(column) or column.type == "boolean"


def check_columns(params: FactorAnalysisParams, columns: list[ColumnInfo]) -> None:
    """Listed columns must exist and be numbers or booleans."""
    select_columns(params.columns, columns, field="columns", accept=accept, kind=ITEM_KINDS)


def run(step: StepInput, params: FactorAnalysisParams) -> StepOutput:
    """Correlate, extract, rotate, score."""
    selected = select_columns(params.columns, step.columns, field="columns", accept=accept)
    m, p = params.n_factors, len(selected)
    if m >= p:
        raise ProcessorInputError(f"{m} factors need more than {m} columns; {p} were given")
    if params.method == "ml" and (p - m) ** 2 < p + m:
        raise ProcessorInputError(
            f"{m} factors are too many for {p} columns with method ml: the model would have"
            f" {((p - m) ** 2 - (p + m)) // 2} degrees of freedom"
        )
    tetrachoric = params.correlation == "tetrachoric"
    items = [
        Item(c.name, "binary" if tetrachoric or c.type == "boolean" else "numeric")
        for c in selected
    ]
    design = read_design(
        step, items, nulls=params.nulls, extra_bytes_per_row=8 * (2 * m + 2), end=0.2
    )
    X, names = design.values, [c.name for c in selected]
    rows = X.shape[0]
    if rows < 3:
        raise ProcessorInputError(f"factor analysis needs at least 3 rows; the items have {rows}")
    step.report(0.2, "correlating")
    r, mean, sd = factoring.pearson(X)
    constant = [name for name, s in zip(names, sd, strict=True) if not s > 0]
    if constant:
        raise ProcessorInputError(
            f"column {constant[0]!r} is constant: it has no correlation with the others",
            column=constant[0],
        )
    smoothed = False
    if tetrachoric:

        def progress(done: int, pairs: int) -> None:
            step.report(0.2 + 0.4 * done / pairs, "tetrachoric correlations")

        r, _ = factoring.tetrachoric(X, progress)
        r, smoothed = factoring.smooth(r)
    if params.method == "ml" and np.linalg.eigvalsh(r).min() <= 1e-12:
        raise ProcessorInputError(
            "the correlation matrix is singular (a column is a linear combination of others):"
            " method ml needs it invertible; use minres or leave a column out"
        )
    step.report(0.6, f"extracting {m} factors ({params.method})")
    extraction = factoring.minres(r, m) if params.method == "minres" else factoring.ml(r, m)
    step.report(0.8, f"rotating ({params.rotation})")
    pattern, phi = _rotate(extraction.loadings, params.rotation)
    pattern, phi = _order_and_sign(pattern, phi)
    oblique = params.rotation in ("promax", "oblimin") and m > 1
    communalities = (extraction.loadings**2).sum(axis=1)
    ss = np.diag(phi @ pattern.T @ pattern) if oblique else (pattern**2).sum(axis=0)
    summary: dict[str, Any] = {
        "n_factors": m,
        "method": params.method,
        "rotation": params.rotation,
        "correlation": params.correlation,
        "loadings": {name: pattern[i].tolist() for i, name in enumerate(names)},
        "communalities": dict(zip(names, communalities.tolist(), strict=True)),
        "uniquenesses": dict(zip(names, (1 - communalities).tolist(), strict=True)),
        "variance_explained": {
            "ss_loadings": ss.tolist(),
            "proportion": (ss / p).tolist(),
            "cumulative": np.cumsum(ss / p).tolist(),
        },
        "objective": extraction.objective,
        "converged": extraction.converged,
        "iterations": extraction.iterations,
        "rows": rows,
        "data": design.summary(),
    }
    if oblique:
        summary["factor_correlations"] = phi.tolist()
    if tetrachoric:
        summary["smoothed"] = smoothed
    step.report(0.85, "scoring")
    weights = np.linalg.solve(r, pattern @ phi)  # Thurstone: R^-1 times the structure
    scores = np.empty((rows, m))
    for first in range(0, rows, factoring.BLOCK_ROWS):
        block = X[first : first + factoring.BLOCK_ROWS]
        scores[first : first + len(block)] = ((block - mean) / sd) @ weights
    columns: dict[str, np.ndarray | pa.Array] = row_columns(step, design.rows)
    for f in range(m):
        columns[f"factor_{f + 1}"] = np.ascontiguousarray(scores[:, f])
    artifact = write_parquet(step, ARTIFACT, columns, start=0.9, end=1.0)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _rotate(loadings: np.ndarray, rotation: str) -> tuple[np.ndarray, np.ndarray]:
    if rotation == "varimax":
        rotated, _ = rotations.varimax(loadings)
        return rotated, np.eye(loadings.shape[1])
    if rotation == "promax":
        return rotations.promax(loadings)
    if rotation == "oblimin":
        return rotations.oblimin(loadings)
    return loadings.copy(), np.eye(loadings.shape[1])


def _order_and_sign(pattern: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors by variance explained, largest first; each with loadings summing to >= 0."""
    signs = np.where(pattern.sum(axis=0) < 0, -1.0, 1.0)
    pattern, phi = pattern * signs, phi * np.outer(signs, signs)
    ss = np.diag(phi @ pattern.T @ pattern)
    order = np.argsort(-ss, kind="stable")
    return pattern[:, order], phi[np.ix_(order, order)]
