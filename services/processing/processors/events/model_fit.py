"""count_model's fits: statsmodels' NB2 NegativeBinomial (dispersion by maximum likelihood,
Newton's method) or its Poisson GLM (IRLS), and 95% prediction intervals.

Newton's method steps in alpha itself. statsmodels starts it from the Poisson estimates and
alpha from their residuals' moments (at least 0.05): on counts with little overdispersion
(alpha ~ 0.002) its first steps leave the domain (alpha < 0, NaN). So it starts here from the
Poisson estimates and the alpha that maximizes the likelihood at them (a bounded search on
log alpha), from where it converges in a few steps to the same maximum. On counts that are
not overdispersed the maximum is at alpha = 0, the boundary: Newton's method fails there too,
and the fit is made by BFGS on log(alpha) (statsmodels' default method for NegativeBinomial),
whose alpha tends to 0 with the Poisson estimates; the summary says so (`note`).

Imported only by a running step (statsmodels, scipy).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

MAX_ITERATIONS = 100
BFGS_ITERATIONS = 1000
LOG_ALPHA_BOUNDS = (-20.0, 5.0)  # alpha from 2e-9 (Poisson) to 148


@dataclass(frozen=True)
class Fit:
    estimate: np.ndarray  # the regression coefficients (without alpha)
    std_error: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    alpha: float | None  # NB2 dispersion: variance = mu + alpha mu^2
    alpha_std_error: float | None
    log_likelihood: float
    aic: float
    bic: float
    deviance: float
    expected: np.ndarray  # fitted means
    converged: bool
    iterations: int
    method: str  # the optimizer of the final fit


def fit(y: np.ndarray, x: np.ndarray, family: str, iteration: Callable[[int], None]) -> Fit:
    """Fit the model; `iteration(n)` is called after each Newton step of the NB fit (it may
    raise to stop it)."""
    import warnings

    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Non-convergence is reported in the summary (`converged`), not as a warning.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        if family == "poisson":
            return _poisson(y, x)
        return _negative_binomial(y, x, iteration)


def _poisson(y: np.ndarray, x: np.ndarray) -> Fit:
    from statsmodels.genmod import families
    from statsmodels.genmod.generalized_linear_model import GLM

    result: Any = GLM(y, x, family=families.Poisson()).fit()
    ci = result.conf_int(alpha=0.05)
    return Fit(
        estimate=result.params,
        std_error=result.bse,
        z=result.tvalues,
        p_value=result.pvalues,
        ci_lower=ci[:, 0],
        ci_upper=ci[:, 1],
        alpha=None,
        alpha_std_error=None,
        log_likelihood=float(result.llf),
        aic=float(result.aic),
        bic=float(result.bic_llf),  # -2 llf + k ln n, as for the NB model
        deviance=float(result.deviance),
        expected=result.fittedvalues,
        converged=bool(result.converged),
        iterations=int(result.fit_history["iteration"]),
        method="irls",
    )


def _negative_binomial(y: np.ndarray, x: np.ndarray, iteration: Callable[[int], None]) -> Fit:
    from statsmodels.discrete.discrete_model import NegativeBinomial
    from statsmodels.genmod import families

    steps = 0

    def callback(params: np.ndarray) -> None:
        nonlocal steps
        steps += 1
        iteration(steps)

    method = "newton"
    model = NegativeBinomial(y, x, loglike_method="nb2")
    start = _start(y, x)
    iteration(0)
    result: Any = model.fit(
        start_params=start, method=method, maxiter=MAX_ITERATIONS, disp=0, callback=callback
    )
    before = 0  # steps of a fit made again
    if not (result.mle_retvals["converged"] and np.all(np.isfinite(result.params))):
        method, before = "bfgs", steps
        model = NegativeBinomial(y, x, loglike_method="nb2")
        result = model.fit(method=method, maxiter=BFGS_ITERATIONS, disp=0, callback=callback)
    ci = result.conf_int(alpha=0.05)
    alpha = float(result.params[-1])
    expected = result.predict()
    return Fit(
        estimate=result.params[:-1],
        std_error=result.bse[:-1],
        z=result.tvalues[:-1],
        p_value=result.pvalues[:-1],
        ci_lower=ci[:-1, 0],
        ci_upper=ci[:-1, 1],
        alpha=alpha,
        alpha_std_error=float(result.bse[-1]),
        log_likelihood=float(result.llf),
        aic=float(result.aic),
        bic=float(result.bic),
        deviance=float(families.NegativeBinomial(alpha=alpha).deviance(y, expected)),
        expected=expected,
        converged=bool(result.mle_retvals["converged"]),
        iterations=steps - before,
        method=method,
    )


def _start(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The Poisson estimates and the alpha maximizing the NB2 likelihood at them."""
    from scipy.optimize import minimize_scalar
    from statsmodels.discrete.discrete_model import Poisson

    beta = Poisson(y, x).fit(disp=0, maxiter=MAX_ITERATIONS).params
    mu = np.exp(x @ beta)

    def minus_loglike(log_alpha: float) -> float:
        size = np.exp(-log_alpha)  # 1 / alpha
        return -float(stats.nbinom.logpmf(y, size, size / (size + mu)).sum())

    found = minimize_scalar(minus_loglike, bounds=LOG_ALPHA_BOUNDS, method="bounded")
    return np.append(beta, np.exp(found.x))


def interval(expected: np.ndarray, alpha: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5% and 97.5% quantiles of each period's fitted distribution (Poisson(mu), or NB2
    with n = 1/alpha, p = 1/(1 + alpha mu)): a 95% prediction interval at the estimates."""
    if alpha is None:
        return stats.poisson.ppf(0.025, expected), stats.poisson.ppf(0.975, expected)
    n, p = 1 / alpha, 1 / (1 + alpha * expected)
    return stats.nbinom.ppf(0.025, n, p), stats.nbinom.ppf(0.975, n, p)
