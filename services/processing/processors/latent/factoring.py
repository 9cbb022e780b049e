"""Correlations and factor extraction for factor_analysis: numpy, with scipy imported by the
functions that need it (the API process never imports scipy.optimize).

- pearson: the correlation matrix of the columns (ddof cancels), from cross-products of the
  centred values summed a block of rows at a time.
- tetrachoric: per pair of 0/1 items, the correlation of two standard normal variables cut
  at thresholds tau = Phi^-1(1 - p) (p: the item's share of 1s) that gives the 2 x 2 table
  its highest multinomial likelihood (psych's tetrachoric with its defaults: global
  thresholds, a zero cell counted as 0.5). P(both 1) = p_i p_j + int_0^rho phi2(tau_i,
  tau_j; r) dr (Plackett's identity), integrated by scipy's quad. A matrix that is not
  positive definite is smoothed as psych's cor.smooth does (eigenvalues below 1e-12 set to
  1e-10, rescaled to sum to the items, back to unit diagonal).
- minres: uniquenesses psi minimising the sum of squared off-diagonal residuals of R against
  the loadings of R with diagonal 1 - psi (its first n eigenvectors scaled by the root of
  their eigenvalues): psych's fa(fm="minres") objective, started at 1 - SMC, bounded to
  [0.005, 1], by L-BFGS-B with the exact gradient (Daleckii-Krein derivative of the top-n
  spectral part). At the optimum this is the fixed point of iterated principal axis
  factoring (tests compare the two).
- ml: uniquenesses minimising the ML discrepancy log|Sigma| + tr(Sigma^-1 R) - log|R| - p
  with Sigma = L L' + Psi, concentrated on psi, with its gradient: R's stats::factanal
  (start (1 - n/2p) / diag(R^-1), bounds [0.005, 1], L-BFGS-B), loadings
  Psi^1/2 V (Lambda - 1)^1/2 from the eigenvectors of Psi^-1/2 R Psi^-1/2.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLOCK_ROWS = 1 << 16
LOWER_PSI, UPPER_PSI = 0.005, 1.0
EIGEN_FLOOR = 100 * np.finfo(float).eps
SMOOTH_TOLERANCE = 1e-12


def pearson(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlation matrix, means and standard deviations (ddof 1) of the columns."""
    rows, width = values.shape
    mean = values.mean(axis=0)
    cross = np.zeros((width, width))
    for first in range(0, rows, BLOCK_ROWS):
        block = values[first : first + BLOCK_ROWS] - mean
        cross += block.T @ block
    variance = np.diag(cross).copy()
    sd = np.sqrt(variance / max(1, rows - 1))
    scale = np.sqrt(np.where(variance > 0, variance, np.nan))
    return cross / np.outer(scale, scale), mean, sd


def upper_probability(tau_i: float, tau_j: float, rho: float) -> float:
    """P(Z_i > tau_i, Z_j > tau_j) for standard normals of correlation rho."""
    from scipy import integrate
    from scipy.stats import norm

    def density(r: float) -> float:
        q = (tau_i**2 - 2 * r * tau_i * tau_j + tau_j**2) / (2 * (1 - r * r))
        return float(np.exp(-q) / (2 * np.pi * np.sqrt(1 - r * r)))

    start = float(norm.sf(tau_i) * norm.sf(tau_j))
    area, _ = integrate.quad(density, 0.0, rho, epsabs=1e-14, epsrel=1e-12, limit=200)
    return start + float(area)


def tetrachoric_pair(table: np.ndarray, tau_i: float, tau_j: float) -> float:
    """The ML correlation of a 2 x 2 table of counts [[n00, n01], [n10, n11]]."""
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    counts = np.asarray(table, dtype=float).copy()
    counts[counts == 0] = 0.5  # psych's correct = 0.5
    p_i, p_j = float(norm.sf(tau_i)), float(norm.sf(tau_j))

    def minus_log_likelihood(rho: float) -> float:
        both = upper_probability(tau_i, tau_j, rho)
        cells = np.array([[1 - p_i - p_j + both, p_j - both], [p_i - both, both]])
        return float(-(counts * np.log(np.clip(cells, 1e-300, None))).sum())

    found = minimize_scalar(
        minus_log_likelihood,
        bounds=(-1 + 1e-9, 1 - 1e-9),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return float(found.x)


def tetrachoric(
    values: np.ndarray, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Tetrachoric correlation matrix of 0/1 columns, and the thresholds tau; `progress`
    is called with (pairs done, pairs) after each pair."""
    from scipy.stats import norm

    rows, width = values.shape
    ones = values.sum(axis=0)
    both = np.zeros((width, width))
    for first in range(0, rows, BLOCK_ROWS):
        block = values[first : first + BLOCK_ROWS]
        both += block.T @ block
    tau = norm.isf(ones / rows)
    r = np.eye(width)
    pairs, done = width * (width - 1) // 2, 0
    for i in range(width):
        for j in range(i + 1, width):
            n11 = both[i, j]
            n10, n01 = ones[i] - n11, ones[j] - n11
            table = np.array([[rows - n11 - n10 - n01, n01], [n10, n11]])
            r[i, j] = r[j, i] = tetrachoric_pair(table, float(tau[i]), float(tau[j]))
            done += 1
            if progress is not None:
                progress(done, pairs)
    return r, tau


def smooth(r: np.ndarray) -> tuple[np.ndarray, bool]:
    """psych's cor.smooth: a positive definite correlation matrix, and whether it changed."""
    values, vectors = np.linalg.eigh(r)
    if values.min() >= np.finfo(float).eps:
        return r, False
    values = np.where(values < SMOOTH_TOLERANCE, 100 * SMOOTH_TOLERANCE, values)
    values *= len(values) / values.sum()
    rebuilt = (vectors * values) @ vectors.T
    d = np.sqrt(np.diag(rebuilt))
    return rebuilt / np.outer(d, d), True


@dataclass(frozen=True)
class Extraction:
    loadings: np.ndarray  # items x factors, unrotated
    uniquenesses: np.ndarray  # the fitted psi
    objective: float
    converged: bool
    iterations: int


def _top(s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues and vectors, largest first: all of them, and the first n."""
    values, vectors = np.linalg.eigh(s)
    values, vectors = values[::-1], vectors[:, ::-1]
    return values, vectors, values[:n], vectors[:, :n]


def minres_loadings(r: np.ndarray, psi: np.ndarray, n: int) -> np.ndarray:
    """The first n eigenvectors of R with diagonal 1 - psi, scaled by their roots."""
    s = r.copy()
    np.fill_diagonal(s, 1 - psi)
    _, _, values, vectors = _top(s, n)
    loadings: np.ndarray = vectors * np.sqrt(np.maximum(values, EIGEN_FLOOR))
    return loadings


def minres_objective(psi: np.ndarray, r: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """Sum of squared off-diagonal residuals, and its gradient in psi."""
    s = r.copy()
    np.fill_diagonal(s, 1 - psi)
    values, vectors, top_values, top_vectors = _top(s, n)
    top_values = np.maximum(top_values, EIGEN_FLOOR)
    loadings = top_vectors * np.sqrt(top_values)
    residual = s - loadings @ loadings.T
    np.fill_diagonal(residual, 0.0)
    value = float((residual**2).sum())
    # d(top part)/dS in the eigenbasis: F_kl = (f(l_k) - f(l_l)) / (l_k - l_l), f(l) = l on
    # the first n eigenvalues and 0 on the rest; dS/dpsi_i = -e_i e_i'.
    top = np.arange(len(values)) < n
    f = np.where(top, values, 0.0)
    gap = values[:, None] - values[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = (f[:, None] - f[None, :]) / gap
    same = np.abs(gap) < 1e-12
    weights[same] = (top[:, None] & top[None, :])[same]  # f' on (near) equal eigenvalues
    g = (vectors.T @ residual @ vectors) * weights
    gradient = 2 * np.einsum("ik,kl,il->i", vectors, g, vectors)
    return value, gradient


def minres(r: np.ndarray, n: int) -> Extraction:
    """psych's fa(fm="minres") on the correlation matrix R for n factors."""
    from scipy.optimize import minimize

    start = np.clip(1 / np.diag(np.linalg.pinv(r)), LOWER_PSI, UPPER_PSI)  # 1 - SMC
    result = minimize(
        minres_objective,
        start,
        args=(r, n),
        jac=True,
        method="L-BFGS-B",
        bounds=[(LOWER_PSI, UPPER_PSI)] * len(start),
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    psi = result.x
    return Extraction(
        loadings=minres_loadings(r, psi, n),
        uniquenesses=psi,
        objective=float(result.fun),
        converged=bool(result.success),
        iterations=int(result.nit),
    )


def ml_objective(psi: np.ndarray, r: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """factanal's FAfn and FAgr: the concentrated ML discrepancy and its gradient."""
    scale = 1 / np.sqrt(psi)
    values, vectors, _, _ = _top(r * np.outer(scale, scale), n)
    rest = values[n:]
    value = -float(np.sum(np.log(rest) - rest) - n + len(psi))
    top = vectors[:, :n] * np.sqrt(np.maximum(values[:n] - 1, 0.0))
    loadings = top * np.sqrt(psi)[:, None]
    g = loadings @ loadings.T + np.diag(psi) - r
    return value, np.diag(g) / psi**2


def ml_loadings(r: np.ndarray, psi: np.ndarray, n: int) -> np.ndarray:
    """factanal's FAout: Psi^1/2 V (Lambda - 1)^1/2 for the first n eigenpairs."""
    scale = 1 / np.sqrt(psi)
    _, _, values, vectors = _top(r * np.outer(scale, scale), n)
    loadings: np.ndarray = vectors * np.sqrt(np.maximum(values - 1, 0.0)) * np.sqrt(psi)[:, None]
    return loadings


def ml(r: np.ndarray, n: int) -> Extraction:
    """R's stats::factanal on the correlation matrix R for n factors."""
    from scipy.optimize import minimize

    start = np.clip((1 - 0.5 * n / len(r)) / np.diag(np.linalg.inv(r)), LOWER_PSI, UPPER_PSI)
    result = minimize(
        ml_objective,
        start,
        args=(r, n),
        jac=True,
        method="L-BFGS-B",
        bounds=[(LOWER_PSI, UPPER_PSI)] * len(start),
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    psi = result.x
    return Extraction(
        loadings=ml_loadings(r, psi, n),
        uniquenesses=psi,
        objective=float(result.fun),
        converged=bool(result.success),
        iterations=int(result.nit),
    )
