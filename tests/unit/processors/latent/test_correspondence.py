"""correspondence equals prince.MCA called directly on a pandas frame of the same planted
data, and an SVD of the standardised residuals computed here with numpy."""

from typing import Any

import numpy as np
import pandas as pd
import prince
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError, ProcessorInputError
from services.processing.processors.latent import correspondence
from services.processing.processors.latent.correspondence import CorrespondenceParams
from tests.unit.processors.conftest import CancelOnCall, columns_of
from tests.unit.processors.latent.conftest import Recorder, TableStep

# The same indicator matrix and the same randomized SVD (same seed): equal to rounding.
RTOL = 1e-8


def planted(rows: int = 1500, seed: int = 6) -> tuple[pa.Table, np.ndarray]:
    """Two groups of rows; four items whose categories depend on the group, one that does
    not (noise), an integer item; nulls in one item."""
    rng = np.random.default_rng(seed)
    group = rng.random(rows) < 0.5

    def item(levels: list[str], p_a: list[float], p_b: list[float]) -> np.ndarray:
        return np.where(group, rng.choice(levels, rows, p=p_a), rng.choice(levels, rows, p=p_b))

    table = pa.table(
        {
            "fruit": item(["apple", "kiwi", "pear"], [0.8, 0.1, 0.1], [0.1, 0.2, 0.7]),
            "drink": item(["tea", "coffee"], [0.85, 0.15], [0.2, 0.8]),
            "bread": pa.array(
                item(["rye", "white", "spelt"], [0.7, 0.2, 0.1], [0.1, 0.7, 0.2]),
                mask=rng.random(rows) < 0.03,
            ),
            "noise": rng.choice(["x", "y", "z"], rows),
            "size": np.where(group, rng.choice([1, 2], rows), rng.choice([2, 3], rows)),
        }
    )
    return table, group


def reference(df: pd.DataFrame, k: int) -> Any:
    return prince.MCA(n_components=k, random_state=0).fit(df)


def test_planted_groups_equal_prince(table_step: TableStep) -> None:
    table, group = planted()
    report = Recorder()
    params = CorrespondenceParams(columns=table.column_names, n_components=3)
    output = correspondence.run(table_step(table, report=report), params)
    s = output.summary

    df = table.to_pandas().dropna()
    model = reference(df, 3)
    np.testing.assert_allclose(s["eigenvalues"], model.eigenvalues_, rtol=RTOL)
    np.testing.assert_allclose(
        s["explained_inertia"], model.percentage_of_variance_ / 100, rtol=RTOL
    )
    assert s["total_inertia"] == pytest.approx(model.total_inertia_, rel=1e-12)
    # prince names a category "column__level"; here it is "column=level".
    coordinates = model.column_coordinates(df)
    contributions = model.column_contributions_
    assert len(s["column_coordinates"]) == len(coordinates) == 3 + 2 + 3 + 3 + 3
    for name, values in s["column_coordinates"].items():
        theirs = name.replace("=", "__", 1)
        np.testing.assert_allclose(values, coordinates.loc[theirs], rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(
            s["column_contributions"][name], contributions.loc[theirs], rtol=RTOL, atol=1e-12
        )
    assert list(s["column_coordinates"])[:3] == ["fruit=apple", "fruit=kiwi", "fruit=pear"]
    assert "size=1" in s["column_coordinates"]
    (artifact,) = output.artifacts
    assert artifact.name == "row_coordinates.parquet"
    rows = pq.read_table(artifact.path).to_pandas()
    assert list(rows.columns) == ["row", "line", "component_1", "component_2", "component_3"]
    np.testing.assert_array_equal(rows["row"], df.index.to_numpy() + 1)
    np.testing.assert_allclose(
        rows.iloc[:, 2:].to_numpy(), model.row_coordinates(df).to_numpy(), rtol=RTOL, atol=1e-12
    )

    # Independently: the principal inertias are the squared singular values of the
    # standardised residuals of the indicator matrix (numpy's exact SVD).
    Z = pd.get_dummies(df.astype(str), dtype=float).to_numpy()
    P = Z / Z.sum()
    r, c = P.sum(axis=1), P.sum(axis=0)
    S = (P - np.outer(r, c)) / np.sqrt(np.outer(r, c))
    singular = np.linalg.svd(S, compute_uv=False)
    np.testing.assert_allclose(s["eigenvalues"], singular[:3] ** 2, rtol=1e-6)
    assert s["total_inertia"] == pytest.approx((Z.shape[1] - 5) / 5, rel=1e-12)

    # The planted structure: the first component separates the groups; the noise item
    # contributes little to it.
    kept_group = group[df.index.to_numpy()]
    assert abs(np.corrcoef(rows["component_1"], kept_group)[0, 1]) > 0.8
    noise = sum(s["column_contributions"][f"noise={v}"][0] for v in "xyz")
    assert noise < 0.02
    assert s["eigenvalues"][0] > 2 * s["eigenvalues"][1]
    assert report.calls[-1][0] >= 0.9


def test_fill_uses_the_mode(table_step: TableStep) -> None:
    table, _ = planted(rows=400)
    df = table.to_pandas()
    df["bread"] = df["bread"].fillna(df["bread"].mode().iloc[0])
    params = CorrespondenceParams(columns=table.column_names, nulls="fill")
    output = correspondence.run(table_step(table), params)
    model = reference(df, 2)
    np.testing.assert_allclose(output.summary["eigenvalues"], model.eigenvalues_, rtol=RTOL)
    rows = pq.read_table(output.artifacts[0].path).to_pandas()
    assert len(rows) == 400


def test_too_many_components_is_an_error(table_step: TableStep) -> None:
    table = pa.table({"a": ["x", "y", "x", "y"], "b": ["p", "p", "q", "q"]})
    # 4 categories, 2 items: at most min(4 rows, 4 categories) - 1 = 3 components.
    params = CorrespondenceParams(columns=["a", "b"], n_components=4)
    with pytest.raises(ProcessorInputError, match="at most min"):
        correspondence.run(table_step(table), params)


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"columns": ["fruit", "nope"]}, "columns[1]", "not in the dataset"),
        ({"columns": ["fruit"]}, "columns", "at least 2"),
        ({"columns": ["fruit", "drink"], "n_components": 0}, "n_components", "greater than"),
        ({"columns": ["fruit", "drink"], "engine": "scipy"}, "engine", "Extra inputs"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    table, _ = planted(rows=5)
    with pytest.raises(ParamsError) as bad:
        registry.validate_step("correspondence", params, columns_of(table))
    assert bad.value.field == field and text in bad.value.message


@pytest.mark.parametrize("call", [1, 2, 5])
def test_cancel(table_step: TableStep, call: int) -> None:
    table, _ = planted(rows=300)
    params = CorrespondenceParams(columns=table.column_names)
    with pytest.raises(JobCancelled):
        correspondence.run(table_step(table, report=CancelOnCall(call)), params)
