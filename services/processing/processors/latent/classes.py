"""latent_classes: latent class analysis of binary and categorical items by EM, with StepMix
(stepmix 3.0, the reference library).

Items: number columns are binary items and must hold only 0 and 1 (another value is an
error naming the column and row); boolean columns are binary (false 0, true 1); text, date
and time columns are categorical, their levels in sorted order (design.py). Binary items are
StepMix's "binary" measurement model, categorical items its "categorical" model on 0-based
level codes; a mix of both is its nested model of the two, binary items first. Nulls follow
`nulls` (design.py: drop_rows by default).

The fit is StepMix(n_components=k, measurement=..., n_init=n_init, max_iter=max_iter,
abs_tol=tol, random_state=seed).fit(X), to the last bit: StepMix runs its n_init starts one
after another, each drawing its random responsibilities from one RandomState(seed), and keeps
the start with the highest final lower bound (the first of equal ones). The processor runs
the same starts as fits of one start sharing that RandomState and keeps the same one, so that
it reports progress after every EM iteration (a start's share of the work grows with its
iterations against the average of the starts before it) and a cancel stops the fit at the
next iteration. `tol` is StepMix's abs_tol: EM stops when the average log-likelihood per row
gains less.

Classes are numbered 1..k, largest first (by estimated class proportion). Summary:

- log_likelihood (StepMix's score(X) x rows), aic (-2 LL + 2 p), bic (-2 LL + p ln n) with
  p = StepMix's n_parameters: (k - 1) + k x (binary items + sum over categorical items of
  their levels - 1);
- entropy: the relative entropy 1 - E / (n ln k) (StepMix's relative_entropy; Mplus'
  "Entropy": 1 means every row surely in one class; null for one class), with
  E = -sum p ln p over rows and classes (StepMix's entropy) as classification_entropy;
- class_sizes: the estimated class proportions, largest first;
- item_probabilities: per class (in class order), per item, P(item = 1) for a binary item
  and {level: P(item = level)} for a categorical one;
- n_parameters, converged (EM met tol within max_iter in the kept start), iterations, the
  kept start (0-based) and each start's final average log-likelihood (`starts`), rows.

With n_classes_range [a, b], each k of a..b is fitted so; `fits` holds each k's
log_likelihood, aic, bic, entropy, n_parameters and converged, and the model of the lowest
BIC (the smallest k of equal ones) is the one reported (`n_classes`) and written.

Artifact memberships.parquet: row (1-based dataset row), class (the most probable, 1-based;
the first of equal ones), posterior_1..posterior_k (StepMix's predict_proba_class).
"""

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.domain.records import ColumnInfo
from services.processing.json_values import json_safe
from services.processing.processors.base import ProcessorInputError, StepInput, StepOutput
from services.processing.processors.columns import reject_duplicate_columns, select_columns
from services.processing.processors.latent.artifacts import row_columns, write_parquet
from services.processing.processors.latent.design import (
    DesignMatrix,
    Item,
    NullPolicy,
    binary_or_categorical,
    is_scalar,
    read_design,
)

ARTIFACT = "memberships.parquet"
MAX_CLASSES = 50
MAX_RANGE = 20  # models of one range
REPORT_SECONDS = 0.1  # least time between two progress reports inside a fit
FIRST_ITERATIONS = 50  # a first start's expected EM iterations, before any has finished

ITEM_KINDS = "a number (0/1), boolean, text, date or time"


class LatentClassesParams(BaseModel):
    """Latent class analysis of binary and categorical items (StepMix)."""

    model_config = ConfigDict(extra="forbid", title="latent_classes")
    columns: list[str] = Field(
        min_length=1,
        description="The items: number columns holding 0/1 and boolean columns are binary;"
        " text, date and time columns categorical.",
    )
    n_classes: int | None = Field(default=None, ge=1, le=MAX_CLASSES)
    n_classes_range: tuple[int, int] | None = Field(
        default=None,
        description="[smallest, largest] number of classes: each is fitted and the lowest BIC"
        " chosen. Give this or n_classes.",
    )
    n_init: int = Field(default=10, ge=1, le=1000, description="Random starts; the best is kept.")
    max_iter: int = Field(default=1000, ge=1, le=100_000, description="EM iterations per start.")
    tol: float = Field(
        default=1e-10,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="EM stops when the average log-likelihood per row gains less (StepMix's"
        " abs_tol).",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="StepMix's random_state.")
    nulls: NullPolicy = Field(
        default="drop_rows",
        description="Rows with a null: drop_rows, fail, or fill (the mode of the item).",
    )
    _unique = field_validator("columns")(reject_duplicate_columns)

    @model_validator(mode="after")
    def _one_number_of_classes(self) -> "LatentClassesParams":
        if (self.n_classes is None) == (self.n_classes_range is None):
            raise ValueError("give n_classes or n_classes_range (one of them)")
        if self.n_classes_range is not None:
            low, high = self.n_classes_range
            if not 1 <= low <= high <= MAX_CLASSES:
                raise ValueError(
                    f"n_classes_range must be [smallest, largest] with 1 <= smallest <= largest"
                    f" <= {MAX_CLASSES}"
                )
            if high - low + 1 > MAX_RANGE:
                raise ValueError(f"n_classes_range spans at most {MAX_RANGE} models")
        return self

    def classes(self) -> list[int]:
        """The numbers of classes to fit."""
        if self.n_classes_range is not None:
            return list(range(self.n_classes_range[0], self.n_classes_range[1] + 1))
        assert self.n_classes is not None  # the validator requires one
        return [self.n_classes]


def check_columns(params: LatentClassesParams, columns: list[ColumnInfo]) -> None:
    """Listed columns must exist and be items."""
    select_columns(params.columns, columns, field="columns", accept=is_scalar, kind=ITEM_KINDS)


def run(step: StepInput, params: LatentClassesParams) -> StepOutput:
    """Read the items, fit each number of classes, write the chosen model's memberships."""
    selected = select_columns(params.columns, step.columns, field="columns", accept=is_scalar)
    kinds = {c.name: binary_or_categorical(c) for c in selected}
    # StepMix's nested model takes its sub-models' columns in blocks: binary items first.
    items = [Item(c.name, kinds[c.name]) for c in selected if kinds[c.name] == "binary"]
    items += [Item(c.name, kinds[c.name]) for c in selected if kinds[c.name] == "categorical"]
    ks = params.classes()
    step.report(0.0, "loading StepMix")
    _reporting_stepmix()  # imports it (seconds, on a cold process) before the data is read
    design = read_design(
        step,
        items,
        nulls=params.nulls,
        encoding="codes",
        extra_bytes_per_row=lambda levels: _fit_bytes_per_row(items, levels, max(ks)),
        end=0.05,
    )
    rows = len(design.rows)
    if max(ks) > rows:
        raise ProcessorInputError(
            f"{max(ks)} classes need at least {max(ks)} rows; the items have {rows}"
            + (f" after dropping {design.dropped} with nulls" if design.dropped else "")
        )
    progress = _Progress(step.report, ks, params.n_init, start=0.05, end=0.9)
    fits = [_fit(design, k, params, progress) for k in ks]
    chosen = min(fits, key=lambda f: (f.bic, f.k))
    summary = _summary(design, chosen, [c.name for c in selected])
    summary |= {"rows": rows, "data": design.summary()}
    if len(ks) > 1:
        summary["fits"] = [f.row() for f in fits]
    posterior = chosen.model.predict_proba_class(design.values)
    columns: dict[str, np.ndarray | pa.Array] = {
        **row_columns(step, design.rows),
        "class": np.argmax(posterior, axis=1).astype(np.int64) + 1,
    }
    for c in range(chosen.k):
        columns[f"posterior_{c + 1}"] = np.ascontiguousarray(posterior[:, c])
    artifact = write_parquet(step, ARTIFACT, columns, start=0.9, end=1.0)
    return StepOutput(summary=json_safe(summary), artifacts=[artifact])


def _fit_bytes_per_row(items: list[Item], levels: dict[str, list[str]], k: int) -> int:
    """Bytes StepMix holds per row beyond the matrix while it fits (measured with tracemalloc
    on stepmix 3.0: 301 bytes a row for 20 binary items and 4 classes, 560 for 8 classes).

    The E-step holds 1 - X (binary items) or the one-hot expansion of the categorical items
    (items x the most levels of one item, made again by the M-step) with a few n x k arrays;
    logsumexp and the M-step up to ~9 n x k arrays; and the row weights.
    """
    binary = sum(1 for i in items if i.kind == "binary")
    categorical = [len(levels[i.column]) for i in items if i.kind == "categorical"]
    one_hot = len(categorical) * max(categorical, default=0)
    return 8 * max(binary + 2 * one_hot + 3 * k, 10 * k) + 16


@dataclass
class _Fit:
    """The kept start of one number of classes, relabelled largest class first."""

    k: int
    model: Any  # the fitted StepMix
    log_likelihood: float
    n_parameters: int
    aic: float
    bic: float
    entropy: float | None
    classification_entropy: float
    converged: bool
    iterations: int
    start: int
    starts: list[float]

    def row(self) -> dict[str, Any]:
        """This model's line of the fit table."""
        return {
            "n_classes": self.k,
            "log_likelihood": self.log_likelihood,
            "aic": self.aic,
            "bic": self.bic,
            "entropy": self.entropy,
            "n_parameters": self.n_parameters,
            "converged": self.converged,
        }


class _Progress:
    """Progress over every start of every model: a start's share grows with k (the E-step
    costs rows x k), and within a start with its iterations against the average of the
    starts finished so far."""

    def __init__(
        self,
        report: Callable[[float, str], None],
        ks: list[int],
        n_init: int,
        *,
        start: float,
        end: float,
    ) -> None:
        self.report, self.n_init, self.start, self.end = report, n_init, start, end
        self.total = sum(ks) * n_init
        self.done = 0.0  # units of finished starts (a start of k classes is k units)
        self.iterations: list[int] = []
        self.last = 0.0
        self.fraction = start

    def iteration(self, k: int, init: int, iteration: int) -> None:
        """Called before each E-step of a start (`iteration` from 1)."""
        now = time.monotonic()
        if now - self.last < REPORT_SECONDS:
            return
        self.last = now
        finished = self.iterations
        expected = sum(finished) / len(finished) if finished else FIRST_ITERATIONS
        # Grows with the iterations, and stays below the start's end when they run long.
        within = iteration / (max(expected, iteration) + 1)
        self._report(self.done + k * within, k, init)

    def finished(self, k: int, init: int, iterations: int) -> None:
        self.done += k
        self.iterations.append(iterations)
        self._report(self.done, k, init)
        self.last = time.monotonic()

    def _report(self, units: float, k: int, init: int) -> None:
        fraction = self.start + (self.end - self.start) * units / self.total
        self.fraction = max(self.fraction, min(fraction, self.end))
        self.report(self.fraction, f"{k} classes: start {init + 1} of {self.n_init}")


@dataclass
class _Hook:
    """A start's iteration hook: counts its E-steps and reports them."""

    progress: _Progress
    k: int
    init: int
    iteration: int = 0

    def __call__(self) -> None:
        self.iteration += 1
        self.progress.iteration(self.k, self.init, self.iteration)


@functools.cache
def _reporting_stepmix() -> type:
    """StepMix that calls its `on_iteration` hook before every E-step."""
    from stepmix.stepmix import StepMix  # the worker's import only: the API never loads it

    class ReportingStepMix(StepMix):
        on_iteration: Callable[[], None] | None = None

        def _e_step(
            self,
            X: Any,
            Y: Any = None,
            sample_weight: Any = None,
            log_emission_pm: Any = None,
        ) -> Any:
            if self.on_iteration is not None:
                self.on_iteration()  # reports progress; raises JobCancelled on a cancel
            return super()._e_step(
                X, Y=Y, sample_weight=sample_weight, log_emission_pm=log_emission_pm
            )

    return ReportingStepMix


def measurement(design: DesignMatrix) -> str | dict[str, dict[str, Any]]:
    """StepMix's measurement descriptor for the items (binary first, as read)."""
    binary = sum(1 for i in design.items if i.kind == "binary")
    categorical = len(design.items) - binary
    if not categorical:
        return "binary"
    if not binary:
        return "categorical"
    return {
        "binary": {"model": "binary", "n_columns": binary},
        "categorical": {"model": "categorical", "n_columns": categorical},
    }


def _fit(design: DesignMatrix, k: int, params: LatentClassesParams, progress: _Progress) -> _Fit:
    """StepMix's n_init starts for k classes, one at a time; the best, largest class first."""
    from sklearn.exceptions import ConvergenceWarning

    model_class = _reporting_stepmix()
    random_state = np.random.RandomState(params.seed)  # shared by the starts, as in StepMix
    best: Any = None
    starts: list[float] = []
    best_start = 0
    X = design.values
    for init in range(params.n_init):
        model = model_class(
            n_components=k,
            measurement=measurement(design),
            n_init=1,
            max_iter=params.max_iter,
            abs_tol=params.tol,
            random_state=random_state,
            progress_bar=0,
        )
        model.on_iteration = _Hook(progress, k, init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X)
        model.on_iteration = None
        # Its first responsibilities (rows x k), used only to start EM: not kept per model.
        vars(model).pop("log_resp_", None)
        progress.finished(k, init, int(model.n_iter_))
        starts.append(float(model.lower_bound_))
        # StepMix's rule: a later start replaces the best only with a higher lower bound.
        if (
            best is None
            or model.lower_bound_ > best.lower_bound_
            or best.lower_bound_ == -np.inf
            or np.isnan(best.lower_bound_)
        ):
            best, best_start = model, init
    order = np.argsort(-best.weights_, kind="stable")
    best.permute_classes(order)
    rows = X.shape[0]
    average = float(best.score(X))
    posterior = best.predict_proba_class(X)
    log_likelihood = average * rows
    n_parameters = int(best.n_parameters)
    clipped = np.clip(posterior, 1e-15, 1 - 1e-15, out=posterior)  # as StepMix's entropy
    classification_entropy = float(-np.sum(clipped * np.log(clipped)))
    del posterior, clipped
    entropy = 1 - classification_entropy / (rows * np.log(k)) if k > 1 else None
    return _Fit(
        k=k,
        model=best,
        log_likelihood=log_likelihood,
        n_parameters=n_parameters,
        aic=-2 * log_likelihood + 2 * n_parameters,
        bic=-2 * log_likelihood + n_parameters * np.log(rows),
        entropy=entropy,
        classification_entropy=classification_entropy,
        converged=bool(best.converged_),
        iterations=int(best.n_iter_),
        start=best_start,
        starts=starts,
    )


def item_probabilities(design: DesignMatrix, model: Any) -> list[dict[str, Any]]:
    """Per class, per item: P(1) of a binary item, {level: P} of a categorical one."""
    parameters = model.get_parameters()["measurement"]
    if "pis" in parameters:  # one kind of item
        blocks = {"binary" if "max_n_outcomes" not in parameters else "categorical": parameters}
    else:
        blocks = parameters
    k = len(model.weights_)
    out: list[dict[str, Any]] = [{} for _ in range(k)]
    binary = [i for i in design.items if i.kind == "binary"]
    categorical = [i for i in design.items if i.kind == "categorical"]
    if binary:
        pis = blocks["binary"]["pis"]  # (k, items)
        for j, item in enumerate(binary):
            for c in range(k):
                out[c][item.column] = float(pis[c, j])
    if categorical:
        block = blocks["categorical"]
        width = int(block["max_n_outcomes"])
        pis = block["pis"]  # (k, items x width): item j's level l at j * width + l
        for j, item in enumerate(categorical):
            levels = design.levels[item.column]
            for c in range(k):
                out[c][item.column] = {
                    level: float(pis[c, j * width + n]) for n, level in enumerate(levels)
                }
    return out


def _summary(design: DesignMatrix, fit: _Fit, order: list[str]) -> dict[str, Any]:
    """The chosen model's figures; item probabilities keyed in the order of `columns`."""
    probabilities = [
        {name: per_item[name] for name in order}
        for per_item in item_probabilities(design, fit.model)
    ]
    return {
        "n_classes": fit.k,
        "log_likelihood": fit.log_likelihood,
        "aic": fit.aic,
        "bic": fit.bic,
        "entropy": fit.entropy,
        "classification_entropy": fit.classification_entropy,
        "n_parameters": fit.n_parameters,
        "class_sizes": [float(w) for w in fit.model.weights_],
        "item_probabilities": probabilities,
        "converged": fit.converged,
        "iterations": fit.iterations,
        "start": fit.start,
        "starts": fit.starts,
    }
