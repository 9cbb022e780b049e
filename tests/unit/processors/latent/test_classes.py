"""latent_classes equals StepMix called directly on a pandas frame of the same planted data."""

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.exceptions import ConvergenceWarning
from stepmix.stepmix import StepMix

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError, ProcessorInputError
from services.processing.processors.latent import classes
from services.processing.processors.latent.classes import LatentClassesParams
from tests.unit.processors.conftest import with_lines
from tests.unit.processors.latent.conftest import Recorder, TableStep, planted_classes

SIZES = [0.5, 0.3, 0.2]
# Same data, same starts, same arithmetic: equal to rounding (the reference permutes classes).
RTOL = 1e-10


def binary_table(rows: int = 3000, items: int = 10, seed: int = 1) -> tuple[pa.Table, np.ndarray]:
    data, truth, _ = planted_classes(rows, items, SIZES, seed=seed)
    return pa.table({f"i{j}": data[:, j] for j in range(items)}), truth


def reference(X: Any, k: int, n_init: int, seed: int, measurement: Any = "binary") -> Any:
    """StepMix as a user would call it; classes then ordered largest first."""
    model = StepMix(
        n_components=k,
        measurement=measurement,
        n_init=n_init,
        random_state=seed,
        progress_bar=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    order = np.argsort(-model.weights_, kind="stable")
    posterior = model.predict_proba_class(X)[:, order]
    return model, order, posterior


def memberships(output: Any) -> pd.DataFrame:
    (artifact,) = output.artifacts
    assert artifact.name == "memberships.parquet"
    return pq.read_table(artifact.path).to_pandas()


def test_binary_items_equal_stepmix_and_find_the_planted_classes(table_step: TableStep) -> None:
    table, truth = binary_table()
    report = Recorder()
    params = LatentClassesParams(columns=table.column_names, n_classes=3, n_init=4, seed=5)
    output = classes.run(table_step(table, report=report), params)
    s = output.summary

    df = table.to_pandas()
    model, order, posterior = reference(df, 3, 4, 5)
    n = len(df)
    assert s["log_likelihood"] == pytest.approx(model.score(df) * n, rel=RTOL)
    assert s["aic"] == pytest.approx(model.aic(df), rel=RTOL)
    assert s["bic"] == pytest.approx(model.bic(df), rel=RTOL)
    assert s["entropy"] == pytest.approx(model.relative_entropy(df), rel=RTOL)
    assert s["classification_entropy"] == pytest.approx(model.entropy(df), rel=RTOL)
    assert s["n_parameters"] == model.n_parameters == 2 + 3 * 10
    assert s["starts"] == pytest.approx(model.lower_bound_buffer_, rel=1e-9)
    np.testing.assert_allclose(s["class_sizes"], model.weights_[order], rtol=RTOL)
    pis = model.get_parameters()["measurement"]["pis"][order]
    for c in range(3):
        got = [s["item_probabilities"][c][f"i{j}"] for j in range(10)]
        np.testing.assert_allclose(got, pis[c], rtol=RTOL)
    rows = memberships(output)
    assert list(rows.columns) == [
        "row",
        "line",
        "class",
        "posterior_1",
        "posterior_2",
        "posterior_3",
    ]
    np.testing.assert_array_equal(rows["row"], np.arange(1, n + 1))
    np.testing.assert_allclose(rows.iloc[:, 3:].to_numpy(), posterior, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(rows["class"], posterior.argmax(axis=1) + 1)

    # The planted structure: sizes, yes-probabilities 0.85 on the class's own items.
    assert s["class_sizes"] == pytest.approx(SIZES, abs=0.03)
    assert s["class_sizes"] == sorted(s["class_sizes"], reverse=True)
    assert s["item_probabilities"][0]["i0"] == pytest.approx(0.85, abs=0.05)
    assert s["item_probabilities"][0]["i1"] == pytest.approx(0.15, abs=0.05)
    agreement = pd.crosstab(truth, rows["class"]).max(axis=1).sum() / n
    assert agreement > 0.9
    assert s["converged"] and s["rows"] == n
    assert report.calls[-1][0] >= 0.9  # then the memberships are written
    assert any("3 classes: start 4 of 4" in message for _, message in report.calls)


def test_one_start_at_a_time_equals_stepmix_n_init(table_step: TableStep) -> None:
    """The kept start and its parameters are StepMix(n_init=...)'s own, not just as good."""
    table, _ = binary_table(rows=400, seed=9)  # small: starts end in different optima
    df = table.to_pandas()
    params = LatentClassesParams(columns=table.column_names, n_classes=4, n_init=6, seed=11)
    s = classes.run(table_step(table), params).summary
    model, order, _ = reference(df, 4, 6, 11)
    assert s["start"] == int(np.argmax(model.lower_bound_buffer_))
    assert s["iterations"] == model.n_iter_
    assert len(set(np.round(s["starts"], 6))) > 1  # the starts differ: the choice matters
    np.testing.assert_allclose(s["class_sizes"], model.weights_[order], rtol=RTOL)


def mixed_table(rows: int = 2000, seed: int = 4) -> pa.Table:
    """Two planted classes over 4 binary items and 2 text items; nulls in both kinds."""
    rng = np.random.default_rng(seed)
    truth = rng.random(rows) < 0.6
    binary = (rng.random((rows, 4)) < np.where(truth[:, None], 0.8, 0.2)).astype(np.int64)
    colors = np.where(
        truth,
        rng.choice(["red", "green", "blue"], rows, p=[0.7, 0.2, 0.1]),
        rng.choice(["red", "green", "blue"], rows, p=[0.1, 0.3, 0.6]),
    )
    sizes = np.where(truth, rng.choice(["S", "M"], rows, p=[0.8, 0.2]), "L")
    return pa.table(
        {
            "color": pa.array(colors, mask=rng.random(rows) < 0.05),
            "b0": pa.array(binary[:, 0], mask=rng.random(rows) < 0.05),
            "b1": binary[:, 1],
            "size": sizes,
            "b2": pa.array(binary[:, 2] == 1),  # boolean: a binary item
            "b3": binary[:, 3],
        }
    )


def mixed_reference_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Binary items then integer-coded categories, and StepMix's nested descriptor."""
    X = pd.DataFrame({name: df[name].astype(float) for name in ["b0", "b1", "b2", "b3"]})
    for name in ["color", "size"]:
        X[name] = pd.Categorical(df[name]).codes
    descriptor = {
        "binary": {"model": "binary", "n_columns": 4},
        "categorical": {"model": "categorical", "n_columns": 2},
    }
    return X, descriptor


@pytest.mark.parametrize("nulls", ["drop_rows", "fill"])
def test_binary_and_categorical_items_equal_stepmix_nested(
    table_step: TableStep, nulls: str
) -> None:
    table = mixed_table()
    df = table.to_pandas()
    if nulls == "drop_rows":
        df = df.dropna().reset_index()
        expected_rows = df["index"].to_numpy() + 1
    else:
        df = df.fillna({"color": df["color"].mode().iloc[0], "b0": df["b0"].mode().iloc[0]})
        expected_rows = np.arange(1, len(df) + 1)
    X, descriptor = mixed_reference_frame(df)
    params = LatentClassesParams(columns=table.column_names, n_classes=2, n_init=3, nulls=nulls)
    output = classes.run(table_step(table), params)
    s = output.summary
    model, order, posterior = reference(X, 2, 3, 0, measurement=descriptor)
    assert s["log_likelihood"] == pytest.approx(model.score(X) * len(X), rel=RTOL)
    assert s["bic"] == pytest.approx(model.bic(X), rel=RTOL)
    assert s["n_parameters"] == model.n_parameters == 1 + 2 * (4 + 2 + 2)
    assert list(s["item_probabilities"][0]) == table.column_names  # the columns' order
    params_ref = model.get_parameters()["measurement"]
    categorical = params_ref["categorical"]["pis"][order]  # (k, 2 items x 3 levels)
    binary = params_ref["binary"]["pis"][order]
    for c in range(2):
        got = s["item_probabilities"][c]
        np.testing.assert_allclose([got[f"b{j}"] for j in range(4)], binary[c], rtol=RTOL)
        assert list(got["color"]) == ["blue", "green", "red"]
        np.testing.assert_allclose(list(got["color"].values()), categorical[c, 0:3], rtol=RTOL)
        assert list(got["size"]) == ["L", "M", "S"]
        np.testing.assert_allclose(list(got["size"].values()), categorical[c, 3:6], rtol=RTOL)
    rows = memberships(output)
    np.testing.assert_array_equal(rows["row"], expected_rows)
    np.testing.assert_allclose(rows.iloc[:, 3:].to_numpy(), posterior, rtol=1e-9, atol=1e-12)
    if nulls == "drop_rows":
        assert s["data"]["dropped_rows"] == 2000 - len(df)
    else:
        assert set(s["data"]["filled"]) == {"color", "b0"}


def test_categorical_items_alone(table_step: TableStep) -> None:
    table = mixed_table().select(["color", "size"])
    df = table.to_pandas().dropna()
    X = pd.DataFrame({name: pd.Categorical(df[name]).codes for name in ["color", "size"]})
    params = LatentClassesParams(columns=["color", "size"], n_classes=2, n_init=2)
    s = classes.run(table_step(table), params).summary
    model, _, _ = reference(X, 2, 2, 0, measurement="categorical")
    assert s["log_likelihood"] == pytest.approx(model.score(X) * len(X), rel=RTOL)


def test_a_range_reports_the_fit_table_and_chooses_by_bic(table_step: TableStep) -> None:
    table, _ = binary_table(rows=1500)
    df = table.to_pandas()
    params = LatentClassesParams(columns=table.column_names, n_classes_range=(1, 4), n_init=2)
    output = classes.run(table_step(table), params)
    s = output.summary
    assert [f["n_classes"] for f in s["fits"]] == [1, 2, 3, 4]
    for fit in s["fits"]:
        model, _, _ = reference(df, fit["n_classes"], 2, 0)
        assert fit["bic"] == pytest.approx(model.bic(df), rel=RTOL)
        assert fit["log_likelihood"] == pytest.approx(model.score(df) * len(df), rel=RTOL)
    best = min(s["fits"], key=lambda f: f["bic"])
    assert s["n_classes"] == best["n_classes"] == 3
    assert s["bic"] == best["bic"]
    assert s["fits"][0]["entropy"] is None  # one class: no relative entropy
    assert memberships(output).shape[1] == 3 + 3  # row, line, class, posteriors


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"columns": ["i0", "nope"], "n_classes": 2}, "columns[1]", "not in the dataset"),
        ({"columns": ["i0", "i0"], "n_classes": 2}, "columns", "twice"),
        ({"columns": ["i0"]}, "", "n_classes or n_classes_range"),
        ({"columns": ["i0"], "n_classes": 2, "n_classes_range": [2, 3]}, "", "one of them"),
        ({"columns": ["i0"], "n_classes_range": [3, 2]}, "", "smallest <= largest"),
        ({"columns": ["i0"], "n_classes": 0}, "n_classes", "greater than or equal"),
        ({"columns": ["i0"], "n_classes": 2, "n_init": 0}, "n_init", "greater than"),
        ({"columns": ["i0"], "n_classes": 2, "nulls": "zero"}, "nulls", "drop_rows"),
        ({"columns": ["i0"], "n_classes": 2, "k": 3}, "k", "Extra inputs"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    table, _ = binary_table(rows=10)
    from tests.unit.processors.conftest import columns_of

    with pytest.raises(ParamsError) as bad:
        registry.validate_step("latent_classes", params, columns_of(table))
    assert bad.value.field == field
    assert text in bad.value.message


def test_a_non_binary_number_item_names_its_column_and_row(table_step: TableStep) -> None:
    table = pa.table({"a": [0, 1, 1, 0, 1], "b": [1, 0, 3, 1, 0]})
    with pytest.raises(ProcessorInputError) as failed:
        classes.run(table_step(table), LatentClassesParams(columns=["a", "b"], n_classes=2))
    assert (failed.value.column, failed.value.row) == ("b", 3)
    assert "holds 3 at row 3" in failed.value.message


def test_more_classes_than_rows_is_an_error(table_step: TableStep) -> None:
    table = pa.table({"a": pa.array([0, 1, None, 0, 1]), "b": [1, 0, 1, 1, 0]})
    params = LatentClassesParams(columns=["a", "b"], n_classes_range=(2, 5))
    with pytest.raises(ProcessorInputError, match="5 classes need at least 5 rows; the items"):
        classes.run(table_step(table), params)


def test_a_null_under_fail_names_its_column_and_row(table_step: TableStep) -> None:
    table = pa.table({"a": pa.array([0, 1, 1, None]), "b": [1, 0, 1, 0]})
    params = LatentClassesParams(columns=["a", "b"], n_classes=2, nulls="fail")
    with pytest.raises(ProcessorInputError) as failed:
        classes.run(table_step(table), params)
    assert (failed.value.column, failed.value.row) == ("a", 4)


class Counting:
    """Counts the fits (starts) begun and the E-steps run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fits = self.e_steps = 0
        base = classes._reporting_stepmix()
        outer = self

        class CountingStepMix(base):  # type: ignore[misc, valid-type]
            def fit(self, *args: Any, **kwargs: Any) -> Any:
                outer.fits += 1
                return super().fit(*args, **kwargs)

            def _e_step(self, *args: Any, **kwargs: Any) -> Any:
                result = super()._e_step(*args, **kwargs)
                outer.e_steps += 1  # an E-step that ran to its end
                return result

        monkeypatch.setattr(classes, "_reporting_stepmix", lambda: CountingStepMix)


def test_a_cancel_after_the_first_start_stops_the_fit(
    table_step: TableStep, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(monkeypatch)
    table, _ = binary_table()

    def report(fraction: float, message: str) -> None:
        if "start 1 of 10" in message and fraction > 0.05:
            raise JobCancelled()  # the report that the first start has finished

    params = LatentClassesParams(columns=table.column_names, n_classes=3)
    with pytest.raises(JobCancelled):
        classes.run(table_step(table, report=report), params)
    assert counting.fits == 1


def test_a_cancel_inside_a_start_stops_at_the_next_iteration(
    table_step: TableStep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classes, "REPORT_SECONDS", 0.0)  # a report before every E-step
    counting = Counting(monkeypatch)
    table, _ = binary_table()
    calls: list[str] = []

    def report(fraction: float, message: str) -> None:
        if message.startswith("3 classes"):
            calls.append(message)
            if len(calls) == 5:
                raise JobCancelled()

    params = LatentClassesParams(columns=table.column_names, n_classes=3, tol=1e-300)
    with pytest.raises(JobCancelled):
        classes.run(table_step(table, report=report), params)
    assert counting.fits == 1 and counting.e_steps == 4


def test_progress_grows_through_the_starts(
    table_step: TableStep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classes, "REPORT_SECONDS", 0.0)
    table, _ = binary_table(rows=1000)
    report = Recorder()  # asserts that fractions never go back
    params = LatentClassesParams(columns=table.column_names, n_classes_range=(2, 3), n_init=3)
    classes.run(table_step(table, report=report), params)
    fit_fractions = [f for f, m in report.calls if "classes: start" in m]
    assert len(fit_fractions) > 6 and fit_fractions[-1] == pytest.approx(0.9)
    # A start of 2 classes is 2 units of 5, of 3 classes 3: the 2-class starts end at 6/15.
    ends = [f for f, m in report.calls if m == "2 classes: start 3 of 3"]
    assert ends[-1] == pytest.approx(0.05 + 0.85 * 6 / 15)


def test_registered_isolated_with_its_schema() -> None:
    processor = registry.get_processor("latent_classes")
    assert processor is not None and processor.isolated
    assert processor.artifacts == ["memberships.parquet"]
    schema = processor.params_model.model_json_schema()
    assert schema["additionalProperties"] is False
    assert {"columns", "n_classes", "n_classes_range", "n_init", "seed"} <= set(
        schema["properties"]
    )


def test_memberships_carry_each_rows_line_in_the_file(table_step: TableStep) -> None:
    table = mixed_table()
    names = table.column_names
    lines = [2 + 3 * i for i in range(table.num_rows)]  # as if blank lines lay between rows
    params = LatentClassesParams(columns=names, n_classes=2, n_init=1, nulls="drop_rows")
    rows = memberships(classes.run(table_step(with_lines(table, lines)), params))
    kept = table.to_pandas().dropna().index.to_numpy()
    np.testing.assert_array_equal(rows["row"], kept + 1)
    np.testing.assert_array_equal(rows["line"], np.array(lines)[kept])
    # A copy made before lines were kept: the column is there, null.
    rows = memberships(classes.run(table_step(table), params))
    assert rows["line"].isna().all()
