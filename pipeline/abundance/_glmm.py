"""Binomial GLMM with a patient and a sample random intercept, fitted by maximum
likelihood with the Laplace approximation (pure numpy/scipy).

The model is lme4's ``glmer(cbind(k, n - k) ~ X + (1 | patient) + (1 | sample),
family = binomial)``::

    logit p_i = x_i' beta + sigma_p a_patient(i) + sigma_s c_i,   a, c ~ N(0, 1)

No maintained Python library fits it by maximum likelihood (statsmodels'
``BinomialBayesMixedGLM`` is a variational-Bayes/MAP fit; ``pymer4`` calls R), so the
likelihood is written here and tested against lme4's own answers
(tests/abundance/data/glmm_reference). Because each sample belongs to one patient, the
Hessian of the random effects is block diagonal by patient, and each block is an arrow
(the patient effect against its samples' effects): Newton steps, log-determinants and
the solves are closed forms over the observations, so one likelihood evaluation
costs a few vector operations whatever the number of patients (compiled with numba in
`pipeline.abundance._laplace`).

The gradient of the Laplace deviance with respect to (beta, sigma_p, sigma_s) is exact,
including the dependence of the log-determinant on the conditional modes; the
covariance of beta comes, as in lme4, from the Hessian of the deviance in all
parameters (central differences of the exact gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, gammaln

from ._laplace import laplace_deviance


@dataclass(frozen=True)
class GlmmFit:
    """A fitted model: estimates, their covariance and how the fit went."""

    beta: np.ndarray
    vcov: np.ndarray
    sd_patient: float
    sd_sample: float
    loglik: float
    converged: bool
    optimizer: str
    message: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def deviance(self) -> float:
        """-2 log-likelihood (lme4's ``deviance`` differs by the saturated model)."""
        return -2.0 * self.loglik


class _Laplace:
    """The Laplace deviance of one data set (compiled: `pipeline.abundance._laplace`),
    with the conditional modes kept between calls as the next Newton start."""

    def __init__(self, count: np.ndarray, total: np.ndarray, x: np.ndarray, patient: np.ndarray):
        self.y = np.ascontiguousarray(count, dtype=np.float64)
        self.n = np.ascontiguousarray(total, dtype=np.float64)
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        self.xt = np.ascontiguousarray(self.x.T)
        self.patient = np.ascontiguousarray(patient, dtype=np.int64)
        self.n_patients = int(patient.max()) + 1
        self.const = float(np.sum(gammaln(self.n + 1) - gammaln(self.y + 1)
                                  - gammaln(self.n - self.y + 1)))  # fmt: skip
        self.a = np.zeros(self.n_patients)
        self.c = np.zeros(self.y.size)

    def deviance(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """-2 log L (Laplace) and its exact gradient in (beta, sigma_p, sigma_s)."""
        params = np.asarray(params, dtype=np.float64)
        dev, grad, self.a, self.c = laplace_deviance(
            self.y, self.n, self.x, self.xt, self.patient, self.n_patients, self.const,
            np.ascontiguousarray(params[:-2]), float(params[-2]), float(params[-1]),
            self.a, self.c,
        )  # fmt: skip
        return float(dev), grad


def _start(count: np.ndarray, total: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Binomial GLM coefficients (IRLS on empirical logits), the usual start."""
    p = (count + 0.5) / (total + 1.0)
    beta = np.linalg.lstsq(x, np.log(p / (1 - p)), rcond=None)[0]
    for _ in range(25):
        mu = expit(x @ beta)
        w = np.maximum(total * mu * (1 - mu), 1e-10)
        step = np.linalg.solve(x.T @ (w[:, None] * x), x.T @ (count - total * mu))
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def _leave_false_boundary(objective: _Laplace, res, descend, k: int):
    """The deviance is even in each standard deviation, so sd = 0 is always a stationary
    point and a gradient method that lands there stays. Probe away from a zero sd and
    descend again while that lowers the deviance (lme4 avoids this with bobyqa)."""
    for _ in range(4):
        moved = False
        for j in (k, k + 1):
            if res.x[j] > 1e-6:
                continue
            for probe in (0.05, 0.2, 0.5):
                trial = res.x.copy()
                trial[j] = probe
                if objective.deviance(trial)[0] < res.fun - 1e-9:
                    new = descend(trial)
                    if new.fun < res.fun - 1e-9:
                        res, moved = new, True
                        break
        if not moved:
            return res
    return res


def _hessian(objective: _Laplace, params: np.ndarray, step: float = 1e-4) -> np.ndarray:
    k = params.size
    hess = np.empty((k, k))
    for j in range(k):
        delta = np.zeros(k)
        delta[j] = step
        hess[:, j] = (objective.deviance(params + delta)[1]
                      - objective.deviance(params - delta)[1]) / (2 * step)  # fmt: skip
    objective.deviance(params)  # leave the modes at the optimum
    return 0.5 * (hess + hess.T)


def _beta_vcov(hess: np.ndarray, params: np.ndarray, k: int) -> np.ndarray:
    """2 H^-1 restricted to beta; a standard deviation estimated at 0 (on the boundary,
    where the deviance is flat to second order in it) is held fixed."""
    keep = list(range(k)) + [k + j for j in range(2) if params[k + j] > 1e-4]
    sub = hess[np.ix_(keep, keep)]
    try:
        return 2.0 * np.linalg.inv(sub)[:k, :k]
    except np.linalg.LinAlgError:  # e.g. a design cell without any cells: infinite log-odds
        return np.full((k, k), np.nan)


def fit_binomial_glmm(
    count: np.ndarray,
    total: np.ndarray,
    design: np.ndarray,
    patient: np.ndarray,
    *,
    max_iter: int = 500,
) -> GlmmFit:
    """Fit ``count / total ~ design + (1 | patient) + (1 | observation)`` by ML (Laplace).

    ``patient`` holds integer codes 0..P-1 (one per observation). Optimizer: L-BFGS-B
    with the exact gradient from the GLM start; when it does not converge, restarts from
    other variance starts and then Nelder-Mead, keeping the best optimum, and says so in
    ``warnings``. Callers validate the design (see ``_design.py``).
    """
    count = np.asarray(count, dtype=float)
    total = np.asarray(total, dtype=float)
    x = np.asarray(design, dtype=float)
    patient = np.asarray(patient, dtype=np.int64)
    k = x.shape[1]
    objective = _Laplace(count, total, x, patient)
    beta0 = _start(count, total, x)
    bounds = [(None, None)] * k + [(0.0, None), (0.0, None)]
    notes: list[str] = []
    best = None

    def descend(start: np.ndarray):
        return minimize(objective.deviance, start, jac=True, method="L-BFGS-B", bounds=bounds,
                        options={"maxiter": max_iter, "gtol": 1e-7, "ftol": 1e-13})  # fmt: skip

    for sd0 in (0.5, 1.0, 0.1):
        objective.a[:] = 0.0
        objective.c[:] = 0.0
        res = _leave_false_boundary(objective, descend(np.concatenate([beta0, [sd0, sd0]])),
                                    descend, k)  # fmt: skip
        if best is None or res.fun < best.fun - 1e-9:
            best = res
        if res.success:
            break
        notes.append(f"L-BFGS-B from sd {sd0} did not converge ({res.message})")
    assert best is not None
    optimizer = "L-BFGS-B"
    if not best.success:
        res = minimize(lambda v: objective.deviance(np.concatenate([v[:k], np.abs(v[k:])]))[0],
                       best.x, method="Nelder-Mead",
                       options={"maxiter": 200 * (k + 2), "xatol": 1e-8, "fatol": 1e-10})  # fmt: skip
        res.x[k:] = np.abs(res.x[k:])
        optimizer = "Nelder-Mead"
        notes.append("fell back to Nelder-Mead" + ("" if res.success else " (not converged)"))
        if res.fun < best.fun:
            best = res
    params = np.asarray(best.x, dtype=float)
    dev, _ = objective.deviance(params)
    vcov = _beta_vcov(_hessian(objective, params), params, k)
    converged = bool(best.success) and bool(np.all(np.isfinite(vcov)))
    if np.any(np.diag(vcov) <= 0) or not np.all(np.isfinite(vcov)):
        notes.append("covariance of the estimates is not positive definite")
        converged = False
    return GlmmFit(
        beta=params[:k],
        vcov=vcov,
        sd_patient=float(params[k]),
        sd_sample=float(params[k + 1]),
        loglik=-0.5 * dev,
        converged=converged,
        optimizer=optimizer,
        message=str(best.message),
        warnings=tuple(notes),
    )
