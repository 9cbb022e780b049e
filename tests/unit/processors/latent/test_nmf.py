"""nmf equals scikit-learn's NMF called directly on a pandas frame of the same planted data."""

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.decomposition import NMF

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError, ProcessorInputError
from services.processing.processors.latent import nmf
from services.processing.processors.latent.nmf import NmfParams
from tests.unit.processors.conftest import CancelOnCall, columns_of
from tests.unit.processors.latent.conftest import Recorder, TableStep

# The same algorithm on the same matrix: equal to rounding.
RTOL = 1e-10
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def planted(rows: int = 2000, items: int = 12, k: int = 3, seed: int = 2) -> tuple[pa.Table, Any]:
    """X = W H + |noise|: each component loads 1-3 on its own 4 items, 0.05 elsewhere."""
    rng = np.random.default_rng(seed)
    H = np.full((k, items), 0.05)
    for c in range(k):
        H[c, c * 4 : c * 4 + 4] = rng.uniform(1, 3, 4)
    W = rng.gamma(2.0, 1.0, (rows, k))
    X = W @ H + np.abs(rng.normal(0, 0.05, (rows, items)))
    return pa.table({f"x{j}": X[:, j] for j in range(items)}), H


def weights(output: Any) -> pd.DataFrame:
    (artifact,) = output.artifacts
    assert artifact.name == "weights.parquet"
    return pq.read_table(artifact.path).to_pandas()


def test_planted_components_equal_sklearn(table_step: TableStep) -> None:
    table, H = planted()
    report = Recorder()
    params = NmfParams(columns=table.column_names, n_components=3, max_iter=500)
    output = nmf.run(table_step(table, report=report), params)
    s = output.summary

    df = table.to_pandas()
    model = NMF(n_components=3, max_iter=500, random_state=0)
    W = model.fit_transform(df)
    assert s["reconstruction_error"] == pytest.approx(model.reconstruction_err_, rel=RTOL)
    assert s["n_iter"] == model.n_iter_ and s["converged"]
    got = np.array([[c[name] for name in table.column_names] for c in s["components"]])
    np.testing.assert_allclose(got, model.components_, rtol=1e-8, atol=1e-12)
    rows = weights(output)
    assert list(rows.columns) == ["row", "line", "weight_1", "weight_2", "weight_3"]
    np.testing.assert_array_equal(rows["row"], np.arange(1, len(df) + 1))
    np.testing.assert_allclose(rows.iloc[:, 2:].to_numpy(), W, rtol=1e-8, atol=1e-12)

    # The planted structure: a small error, and each true component found (cosine > 0.99).
    assert s["relative_error"] < 0.05
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    truth = H / np.linalg.norm(H, axis=1, keepdims=True)
    assert (unit @ truth.T).max(axis=0).min() > 0.99
    assert report.calls[-1][0] >= 0.9


def test_booleans_and_categories_with_filled_nulls_equal_sklearn_on_dummies(
    table_step: TableStep,
) -> None:
    rng = np.random.default_rng(5)
    n = 600
    table = pa.table(
        {
            "amount": pa.array(rng.gamma(2, 3, n), mask=rng.random(n) < 0.05),
            "flag": pa.array(rng.random(n) < 0.3),
            "kind": pa.array(rng.choice(["a", "b", "c"], n), mask=rng.random(n) < 0.05),
        }
    )
    params = NmfParams(columns=["amount", "flag", "kind"], n_components=2, nulls="fill", seed=3)
    output = nmf.run(table_step(table), params)
    df = table.to_pandas()
    df["amount"] = df["amount"].fillna(df["amount"].mean())
    df["kind"] = df["kind"].fillna(df["kind"].mode().iloc[0])
    df["flag"] = df["flag"].astype(float)
    X = pd.get_dummies(df, columns=["kind"], prefix_sep="=", dtype=float)
    model = NMF(n_components=2, random_state=3)
    W = model.fit_transform(X)
    s = output.summary
    assert (
        list(s["components"][0])
        == list(X.columns)
        == ["amount", "flag", "kind=a", "kind=b", "kind=c"]
    )
    assert s["reconstruction_error"] == pytest.approx(model.reconstruction_err_, rel=RTOL)
    np.testing.assert_allclose(weights(output).iloc[:, 2:].to_numpy(), W, rtol=1e-8, atol=1e-12)
    assert s["data"]["filled"]["kind"]["nulls"] == int(table["kind"].null_count)


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvdar"])
def test_each_init_equals_sklearn(table_step: TableStep, init: str) -> None:
    table, _ = planted(rows=300)
    params = NmfParams(columns=table.column_names, n_components=3, init=init, seed=7)
    s = nmf.run(table_step(table), params).summary
    model = NMF(n_components=3, init=init, random_state=7)
    model.fit_transform(table.to_pandas())
    assert s["reconstruction_error"] == pytest.approx(model.reconstruction_err_, rel=RTOL)


def test_a_negative_value_names_its_column_and_row(table_step: TableStep) -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": [0.5, -1.5, 2.0]})
    with pytest.raises(ProcessorInputError) as failed:
        nmf.run(table_step(table), NmfParams(columns=["a", "b"], n_components=1))
    assert (failed.value.column, failed.value.row) == ("b", 2)
    assert "negative value -1.5 at row 2" in failed.value.message


def test_nndsvd_needs_no_more_components_than_columns(table_step: TableStep) -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": [0.5, 1.5, 2.0]})
    with pytest.raises(ProcessorInputError, match="n_components <= min"):
        nmf.run(table_step(table), NmfParams(columns=["a", "b"], n_components=3, init="nndsvd"))
    s = nmf.run(table_step(table), NmfParams(columns=["a", "b"], n_components=3)).summary
    assert len(s["components"]) == 3  # the default init is random then, as in scikit-learn


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"columns": ["x0", "nope"], "n_components": 2}, "columns[1]", "not in the dataset"),
        ({"columns": ["x0"], "n_components": 0}, "n_components", "greater than"),
        ({"columns": ["x0"]}, "n_components", "required"),
        ({"columns": ["x0"], "n_components": 2, "init": "custom"}, "init", "random"),
        ({"columns": ["x0"], "n_components": 2, "solver": "mu"}, "solver", "Extra inputs"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    table, _ = planted(rows=5)
    with pytest.raises(ParamsError) as bad:
        registry.validate_step("nmf", params, columns_of(table))
    assert bad.value.field == field and text in bad.value.message


@pytest.mark.parametrize("call", [1, 2, 4])
def test_cancel(table_step: TableStep, call: int) -> None:
    table, _ = planted(rows=300)
    params = NmfParams(columns=table.column_names, n_components=3)
    with pytest.raises(JobCancelled):
        nmf.run(table_step(table, report=CancelOnCall(call)), params)
