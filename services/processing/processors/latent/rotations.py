"""Factor rotations of a loadings matrix (items x factors), numpy only.

- varimax: R's stats::varimax (Kaiser normalisation of the rows by default; SVD iterations
  until the criterion grows by less than a relative `eps`, here 1e-14 so that the result is
  the optimum to ~1e-7 rather than R's ~1e-3), the algorithm of scikit-learn's
  FactorAnalysis(rotation="varimax") without the normalisation.
- promax: R's stats::promax with m = 4 (varimax, then a least-squares fit to the loadings
  raised to the power m keeping their signs, columns rescaled), with psych's factor
  correlations Phi = U^-1 U^-T of the whole rotation U.
- oblimin: Jennrich's gradient projection for oblique rotations, GPArotation's GPFoblq with
  the oblimin criterion (gamma 0, quartimin; no normalisation: psych's default).

Every function returns (rotated loadings, factor correlations): the identity for orthogonal
rotations. An oblique rotation's loadings are the pattern matrix; pattern Phi pattern'
equals the unrotated loadings' L L'.
"""

import numpy as np

VARIMAX_EPS = 1e-14  # R's default 1e-5 leaves ~1e-3 in the loadings
VARIMAX_MAX_ITER = 1000
GPA_EPS = 1e-9
GPA_MAX_ITER = 5000


def varimax(
    loadings: np.ndarray, *, normalize: bool = True, eps: float = VARIMAX_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """Varimax-rotated loadings and the rotation matrix (R's stats::varimax)."""
    x = np.array(loadings, dtype=float)
    p, nc = x.shape
    if nc < 2:
        return x, np.eye(nc)
    scale = np.sqrt((x**2).sum(axis=1)) if normalize else np.ones(p)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero row stays zero
    x = x / scale[:, None]
    rotation = np.eye(nc)
    criterion = 0.0
    for _ in range(VARIMAX_MAX_ITER):
        z = x @ rotation
        b = x.T @ (z**3 - z * ((z**2).sum(axis=0) / p))
        u, s, vt = np.linalg.svd(b)
        rotation = u @ vt
        previous, criterion = criterion, float(s.sum())
        if criterion < previous * (1 + eps):
            break
    return (x @ rotation) * scale[:, None], rotation


def promax(loadings: np.ndarray, m: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Promax-rotated loadings (pattern) and factor correlations (R's stats::promax)."""
    x = np.asarray(loadings, dtype=float)
    nc = x.shape[1]
    if nc < 2:
        return x.copy(), np.eye(nc)
    rotated, varimax_rotation = varimax(x)
    target = rotated * np.abs(rotated) ** (m - 1)
    u = np.linalg.lstsq(rotated, target, rcond=None)[0]
    d = np.diag(np.linalg.inv(u.T @ u))
    u = u @ np.diag(np.sqrt(d))
    pattern = rotated @ u
    whole = varimax_rotation @ u
    inverse = np.linalg.inv(whole)
    return pattern, inverse @ inverse.T


def oblimin_criterion(loadings: np.ndarray) -> tuple[float, np.ndarray]:
    """Quartimin's value and gradient (GPArotation's vgQ.oblimin, gamma 0)."""
    squared = loadings**2
    off = np.ones((loadings.shape[1],) * 2) - np.eye(loadings.shape[1])
    x = squared @ off
    return float((squared * x).sum() / 4), loadings * x


def oblimin(loadings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Oblimin-rotated loadings (pattern) and factor correlations (GPArotation's GPFoblq)."""
    a = np.asarray(loadings, dtype=float)
    nc = a.shape[1]
    if nc < 2:
        return a.copy(), np.eye(nc)
    t = np.eye(nc)
    step = 1.0
    pattern = a @ np.linalg.inv(t).T
    f, gq = oblimin_criterion(pattern)
    g = -(pattern.T @ gq @ np.linalg.inv(t)).T
    for _ in range(GPA_MAX_ITER):
        projected = g - t @ np.diag((t * g).sum(axis=0))
        s = float(np.sqrt((projected**2).sum()))
        if s < GPA_EPS:
            break
        step *= 2
        for _ in range(11):
            x = t - step * projected
            candidate = x / np.sqrt((x**2).sum(axis=0))
            pattern = a @ np.linalg.inv(candidate).T
            f_new, gq = oblimin_criterion(pattern)
            if f - f_new > 0.5 * s**2 * step:
                break
            step /= 2
        t, f = candidate, f_new
        g = -(pattern.T @ gq @ np.linalg.inv(t)).T
    return pattern, t.T @ t
