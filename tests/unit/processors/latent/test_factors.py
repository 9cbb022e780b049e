"""factor_analysis against references computed independently on the same planted data:
iterated principal axis factoring (minres's fixed point), scikit-learn's FactorAnalysis (ML,
varimax), scipy's multivariate normal (tetrachoric), and the planted loadings themselves."""

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.optimize import brentq, check_grad
from scipy.stats import multivariate_normal, norm
from sklearn.decomposition import FactorAnalysis
from sklearn.decomposition._factor_analysis import _ortho_rotation

from services.processing.processors import registry
from services.processing.processors.base import JobCancelled, ParamsError, ProcessorInputError
from services.processing.processors.latent import factoring, factors, rotations
from services.processing.processors.latent.factors import FactorAnalysisParams
from tests.unit.processors.conftest import CancelOnCall, columns_of
from tests.unit.processors.latent.conftest import Recorder, TableStep

# Three factors, three items each, plus a correlation between factors 1 and 2 (oblique).
PLANTED = np.array(
    [
        [0.8, 0, 0],
        [0.7, 0, 0],
        [0.6, 0, 0],
        [0, 0.75, 0],
        [0, 0.65, 0],
        [0, 0.55, 0],
        [0, 0, 0.8],
        [0, 0, 0.7],
        [0, 0, 0.6],
    ]
)


def planted(rows: int = 4000, phi12: float = 0.0, seed: int = 8) -> pa.Table:
    """Normal items from PLANTED loadings (factor correlation phi12 between 1 and 2)."""
    rng = np.random.default_rng(seed)
    phi = np.eye(3)
    phi[0, 1] = phi[1, 0] = phi12
    scores = rng.multivariate_normal(np.zeros(3), phi, rows)
    common = PLANTED @ phi @ PLANTED.T
    noise = rng.normal(size=(rows, 9)) * np.sqrt(1 - np.diag(common))
    data = scores @ PLANTED.T + noise
    return pa.table({f"x{j}": data[:, j] * (j + 1) + j for j in range(9)})  # any scale


def principal_axis(r: np.ndarray, n: int) -> np.ndarray:
    """Iterated principal axis factoring to convergence: minres's fixed point."""
    h = 1 - 1 / np.diag(np.linalg.inv(r))
    for _ in range(100_000):
        s = r.copy()
        np.fill_diagonal(s, h)
        values, vectors = np.linalg.eigh(s)
        loadings: np.ndarray = vectors[:, ::-1][:, :n] * np.sqrt(values[::-1][:n])
        new = (loadings**2).sum(axis=1)
        if np.abs(new - h).max() < 1e-15:
            break
        h = new
    return loadings


def matched(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """`got`'s columns reordered and turned to line up with `expected`'s (sign, order)."""
    out = np.empty_like(got)
    for f in range(expected.shape[1]):
        cos = got.T @ expected[:, f]
        best = int(np.argmax(np.abs(cos)))
        out[:, f] = got[:, best] * np.sign(cos[best])
    return out


def summary_matrix(s: dict[str, Any], key: str = "loadings") -> np.ndarray:
    return np.array([s[key][f"x{j}"] for j in range(9)])


def test_minres_equals_iterated_principal_axis_factoring(table_step: TableStep) -> None:
    table = planted()
    report = Recorder()
    params = FactorAnalysisParams(columns=table.column_names, n_factors=3, rotation="none")
    output = factors.run(table_step(table, report=report), params)
    s = output.summary
    r = table.to_pandas().corr().to_numpy()
    expected = principal_axis(r, 3)
    got = summary_matrix(s)
    np.testing.assert_allclose(matched(got, expected), expected, atol=1e-6)
    communalities = (expected**2).sum(axis=1)
    np.testing.assert_allclose(
        [s["communalities"][f"x{j}"] for j in range(9)], communalities, atol=1e-6
    )
    np.testing.assert_allclose(
        [s["uniquenesses"][f"x{j}"] for j in range(9)], 1 - communalities, atol=1e-6
    )
    assert s["converged"]
    # The planted loadings once rotated, up to sign and order (sampling error at 4,000 rows).
    rotated, _ = rotations.varimax(got)
    np.testing.assert_allclose(matched(rotated, PLANTED), PLANTED, atol=0.06)
    assert report.calls[-1][0] >= 0.9


def test_ml_equals_sklearn_factor_analysis(table_step: TableStep) -> None:
    table = planted(seed=9)
    params = FactorAnalysisParams(
        columns=table.column_names, n_factors=3, method="ml", rotation="none"
    )
    s = factors.run(table_step(table), params).summary
    df = table.to_pandas()
    z = (df - df.mean()) / df.std(ddof=0)  # ML on the correlation matrix
    model = FactorAnalysis(n_components=3, tol=1e-8, max_iter=10_000, svd_method="lapack").fit(z)
    theirs = model.components_.T
    got = summary_matrix(s)
    # The loadings are identified up to rotation: compare L L' and the uniquenesses.
    np.testing.assert_allclose(got @ got.T, theirs @ theirs.T, atol=1e-5)
    np.testing.assert_allclose(
        [s["uniquenesses"][f"x{j}"] for j in range(9)], model.noise_variance_, atol=1e-5
    )
    # Unrotated ML loadings are unique up to sign and order (distinct eigenvalues).
    np.testing.assert_allclose(matched(got, theirs), theirs, atol=1e-4)


def test_ml_varimax_equals_sklearn_varimax_up_to_sign_and_order(table_step: TableStep) -> None:
    table = planted(seed=10)
    params = FactorAnalysisParams(
        columns=table.column_names, n_factors=3, method="ml", rotation="varimax"
    )
    s = factors.run(table_step(table), params).summary
    df = table.to_pandas()
    z = (df - df.mean()) / df.std(ddof=0)
    model = FactorAnalysis(
        n_components=3, tol=1e-8, max_iter=10_000, svd_method="lapack", rotation="varimax"
    )
    theirs = model.fit(z).components_.T
    got = summary_matrix(s)
    # scikit-learn's varimax has no Kaiser normalisation: equal to sampling noise only...
    np.testing.assert_allclose(matched(got, theirs), theirs, atol=0.01)
    # ...and equal once its rows are normalised as here (R's stats::varimax).
    unrotated = FactorAnalysis(n_components=3, tol=1e-8, max_iter=10_000, svd_method="lapack").fit(
        z
    )
    loadings = unrotated.components_.T
    h = np.sqrt((loadings**2).sum(axis=1))[:, None]
    kaiser = _ortho_rotation(loadings / h, "varimax", tol=1e-14, max_iter=100_000).T * h
    np.testing.assert_allclose(matched(got, kaiser), kaiser, atol=2e-5)
    assert "factor_correlations" not in s


def test_varimax_without_normalisation_is_sklearn_s_algorithm() -> None:
    loadings = np.random.default_rng(1).normal(size=(8, 3))
    got, rotation = rotations.varimax(loadings, normalize=False)
    theirs = _ortho_rotation(loadings, "varimax", tol=1e-14, max_iter=100_000).T
    np.testing.assert_allclose(got, theirs, atol=1e-8)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("rotation", ["promax", "oblimin"])
def test_oblique_rotations_find_the_planted_factor_correlation(
    table_step: TableStep, rotation: str
) -> None:
    table = planted(rows=8000, phi12=0.4, seed=11)
    params = FactorAnalysisParams(columns=table.column_names, n_factors=3, rotation=rotation)
    s = factors.run(table_step(table), params).summary
    pattern = summary_matrix(s)
    phi = np.array(s["factor_correlations"])
    # Invariant: P Phi P' is the unrotated L L' (= R minus the uniquenesses off the diagonal).
    unrotated = FactorAnalysisParams(columns=table.column_names, n_factors=3, rotation="none")
    plain = summary_matrix(factors.run(table_step(table), unrotated).summary)
    np.testing.assert_allclose(pattern @ phi @ pattern.T, plain @ plain.T, atol=1e-9)
    np.testing.assert_allclose(np.diag(phi), 1.0, atol=1e-12)
    # Planted: simple structure and the 0.4 correlation (promax, a cruder target, within 0.1).
    order = [
        int(np.argmax(np.abs(pattern[0:3].sum(axis=0)))),
        int(np.argmax(np.abs(pattern[3:6].sum(axis=0)))),
    ]
    assert order[0] != order[1]
    tolerance = 0.06 if rotation == "oblimin" else 0.1
    assert abs(phi[order[0], order[1]]) == pytest.approx(0.4, abs=tolerance)
    np.testing.assert_allclose(matched(pattern, PLANTED), PLANTED, atol=tolerance)
    assert s["variance_explained"]["ss_loadings"] == sorted(
        s["variance_explained"]["ss_loadings"], reverse=True
    )


def test_oblimin_is_a_minimum_of_its_criterion() -> None:
    rng = np.random.default_rng(2)
    loadings = PLANTED + rng.normal(0, 0.05, PLANTED.shape)
    unrotated = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    a = loadings @ unrotated  # an arbitrary orthogonal turn of a simple structure
    pattern, phi = rotations.oblimin(a)
    best, _ = rotations.oblimin_criterion(pattern)
    t = np.linalg.cholesky(phi).T  # phi = T'T, pattern = A T'^-1
    for _ in range(50):
        nudged = t + rng.normal(0, 1e-3, t.shape)
        nudged /= np.sqrt((nudged**2).sum(axis=0))
        value, _ = rotations.oblimin_criterion(a @ np.linalg.inv(nudged).T)
        assert value >= best - 1e-12


def binary_planted(rows: int = 20_000, seed: int = 12) -> tuple[pa.Table, np.ndarray]:
    """0/1 items cutting normal variables of 2 factors at varied thresholds."""
    rng = np.random.default_rng(seed)
    loadings = np.array([[0.8, 0], [0.7, 0], [0.6, 0], [0, 0.8], [0, 0.7], [0, 0.6]])
    latent = rng.normal(size=(rows, 2)) @ loadings.T
    latent += rng.normal(size=(rows, 6)) * np.sqrt(1 - (loadings**2).sum(axis=1))
    thresholds = np.array([-0.5, 0.0, 0.8, 0.3, -1.0, 0.5])
    data = (latent > thresholds).astype(np.int64)
    return pa.table({f"x{j}": data[:, j] for j in range(6)}), loadings @ loadings.T


def test_tetrachoric_pairs_equal_the_bivariate_normal_root() -> None:
    table, truth = binary_planted()
    x = table.to_pandas().to_numpy(dtype=float)
    r, tau = factoring.tetrachoric(x)
    for i, j in [(0, 1), (0, 3), (2, 5), (4, 5)]:
        p11 = np.mean((x[:, i] == 1) & (x[:, j] == 1))

        def excess(rho: float, i: int = i, j: int = j, p11: float = p11) -> float:
            cov = [[1, rho], [rho, 1]]
            # P(Z_i > tau_i, Z_j > tau_j) = P(-Z_i < -tau_i, -Z_j < -tau_j).
            cdf = multivariate_normal(mean=[0, 0], cov=cov).cdf([-tau[i], -tau[j]])
            return float(cdf - p11)

        assert r[i, j] == pytest.approx(brentq(excess, -0.99, 0.99, xtol=1e-10), abs=2e-4)
    np.testing.assert_allclose(r, truth + np.diag(1 - np.diag(truth)), atol=0.03)
    assert tau[1] == pytest.approx(norm.isf(x[:, 1].mean()))


def test_a_zero_cell_is_counted_as_half() -> None:
    table = np.array([[50, 0], [30, 20]])  # no row with i = 0 and j = 1
    tau_i, tau_j = norm.isf(50 / 100), norm.isf(20 / 100)
    rho = factoring.tetrachoric_pair(table, tau_i, tau_j)
    assert 0.5 < rho < 1  # perfect implication, but for the half count
    corrected = factoring.tetrachoric_pair(np.array([[50, 0.5], [30, 20]]), tau_i, tau_j)
    assert rho == pytest.approx(corrected, abs=1e-9)


def test_smoothing_makes_a_correlation_matrix_positive_definite() -> None:
    r = np.array([[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]])
    smoothed, changed = factoring.smooth(r)
    assert changed and np.linalg.eigvalsh(smoothed).min() > 0
    np.testing.assert_allclose(np.diag(smoothed), 1.0)
    unchanged, changed = factoring.smooth(np.eye(3))
    assert not changed and np.array_equal(unchanged, np.eye(3))


def test_tetrachoric_factor_analysis_recovers_the_planted_loadings(table_step: TableStep) -> None:
    table, _ = binary_planted()
    params = FactorAnalysisParams(
        columns=table.column_names, n_factors=2, correlation="tetrachoric", rotation="varimax"
    )
    s = factors.run(table_step(table), params).summary
    got = np.array([s["loadings"][f"x{j}"] for j in range(6)])
    expected = np.array([[0.8, 0], [0.7, 0], [0.6, 0], [0, 0.8], [0, 0.7], [0, 0.6]])
    np.testing.assert_allclose(matched(got, expected), expected, atol=0.05)
    assert s["smoothed"] is False


def test_scores_are_thurstone_regression_scores(table_step: TableStep) -> None:
    table = planted(rows=500)
    params = FactorAnalysisParams(columns=table.column_names, n_factors=3, rotation="promax")
    output = factors.run(table_step(table), params)
    s = output.summary
    pattern, phi = summary_matrix(s), np.array(s["factor_correlations"])
    df = table.to_pandas()
    z = ((df - df.mean()) / df.std(ddof=1)).to_numpy()
    expected = z @ np.linalg.solve(df.corr().to_numpy(), pattern @ phi)
    (artifact,) = output.artifacts
    assert artifact.name == "scores.parquet"
    scores = pq.read_table(artifact.path).to_pandas()
    assert list(scores.columns) == ["row", "line", "factor_1", "factor_2", "factor_3"]
    np.testing.assert_allclose(scores.iloc[:, 2:].to_numpy(), expected, atol=1e-8)
    np.testing.assert_array_equal(scores["row"], np.arange(1, 501))


def test_nulls_dropped_or_filled(table_step: TableStep) -> None:
    table = planted(rows=300)
    mask = np.zeros(300, dtype=bool)
    mask[[4, 50]] = True
    table = table.set_column(0, "x0", pa.array(table["x0"].to_numpy(), mask=mask))
    params = FactorAnalysisParams(columns=table.column_names, n_factors=2, rotation="none")
    output = factors.run(table_step(table), params)
    df = table.to_pandas().dropna()
    expected = principal_axis(df.corr().to_numpy(), 2)
    np.testing.assert_allclose(
        matched(summary_matrix(output.summary), expected), expected, atol=1e-6
    )
    rows = pq.read_table(output.artifacts[0].path).to_pandas()["row"]
    np.testing.assert_array_equal(rows, df.index.to_numpy() + 1)
    filled = factors.run(table_step(table), params.model_copy(update={"nulls": "fill"}))
    assert filled.summary["rows"] == 300
    assert filled.summary["data"]["filled"]["x0"]["nulls"] == 2


def test_the_objectives_gradients_are_exact() -> None:
    r = planted().to_pandas().corr().to_numpy()
    psi = np.linspace(0.3, 0.7, 9)
    for objective in (factoring.minres_objective, factoring.ml_objective):
        error = check_grad(
            lambda x, f=objective: f(x, r, 3)[0], lambda x, f=objective: f(x, r, 3)[1], psi
        )
        assert error < 1e-5


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({"columns": ["x0", "x1", "nope"], "n_factors": 1}, "columns[2]", "not in the dataset"),
        ({"columns": ["x0", "x1", "label"], "n_factors": 1}, "columns[2]", "number or boolean"),
        ({"columns": ["x0", "x1"], "n_factors": 1}, "columns", "at least 3"),
        ({"columns": ["x0", "x1", "x2"], "n_factors": 0}, "n_factors", "greater than"),
        (
            {"columns": ["x0", "x1", "x2"], "n_factors": 1, "rotation": "geomin"},
            "rotation",
            "oblimin",
        ),
        ({"columns": ["x0", "x1", "x2"], "n_factors": 1, "method": "pa"}, "method", "minres"),
        (
            {"columns": ["x0", "x1", "x2"], "n_factors": 1, "correlation": "spearman"},
            "correlation",
            "tetrachoric",
        ),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], field: str, text: str) -> None:
    table = planted(rows=5).append_column("label", pa.array(["a"] * 5))
    with pytest.raises(ParamsError) as bad:
        registry.validate_step("factor_analysis", params, columns_of(table))
    assert bad.value.field == field and text in bad.value.message


def test_bad_data_is_an_error_naming_the_column(table_step: TableStep) -> None:
    table = planted(rows=50)
    names = table.column_names
    with pytest.raises(ProcessorInputError, match="3 factors need more than 3 columns"):
        factors.run(table_step(table), FactorAnalysisParams(columns=names[:3], n_factors=3))
    with pytest.raises(ProcessorInputError, match="too many for 5 columns with method ml"):
        params = FactorAnalysisParams(columns=names[:5], n_factors=3, method="ml")
        factors.run(table_step(table), params)
    constant = table.append_column("flat", pa.array([2.0] * 50))
    with pytest.raises(ProcessorInputError, match="'flat' is constant") as failed:
        params = FactorAnalysisParams(columns=[*names[:4], "flat"], n_factors=1)
        factors.run(table_step(constant), params)
    assert failed.value.column == "flat"
    with pytest.raises(ProcessorInputError) as failed:
        params = FactorAnalysisParams(columns=names[:4], n_factors=1, correlation="tetrachoric")
        factors.run(table_step(table), params)
    assert failed.value.column == "x0" and failed.value.row == 1


@pytest.mark.parametrize("call", [1, 2, 5])
def test_cancel(table_step: TableStep, call: int) -> None:
    table, _ = binary_planted(rows=500)
    params = FactorAnalysisParams(
        columns=table.column_names, n_factors=2, correlation="tetrachoric"
    )
    with pytest.raises(JobCancelled):
        factors.run(table_step(table, report=CancelOnCall(call)), params)


def test_registered() -> None:
    processor = registry.get_processor("factor_analysis")
    assert processor is not None and processor.isolated
    assert processor.artifacts == ["scores.parquet"]
    _ = pd  # pandas builds the references above
