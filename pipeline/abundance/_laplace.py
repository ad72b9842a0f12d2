"""The Laplace deviance of the binomial GLMM with a patient and a sample random intercept,
and its exact gradient, compiled with numba (no I/O).

The same arithmetic as the numpy version it replaced (see `pipeline.abundance._glmm` for
the model and the closed forms): one evaluation is ~60 small array operations, which in
numpy cost ~0.45 ms of interpreter overhead each time; compiled, one model fit (~50
evaluations) takes a few milliseconds, which is what lets the neighbourhoods stage fit
tens of thousands of them.
"""

from __future__ import annotations

import math

import numba
import numpy as np

NEWTON_TOL = 1e-10
MAX_NEWTON = 60


@numba.njit(cache=True)
def _expit(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@numba.njit(cache=True)
def _log1pexp(v: float) -> float:  # logaddexp(0, v)
    if v > 0:
        return v + math.log1p(math.exp(-v))
    return math.log1p(math.exp(v))


@numba.njit(cache=True)
def _psum(values, patient, n_patients):
    out = np.zeros(n_patients)
    for i in range(values.size):
        out[patient[i]] += values[i]
    return out


@numba.njit(cache=True)
def _penalized(y, n, eta, a, c) -> float:
    s = 0.0
    for i in range(y.size):
        s += y[i] * eta[i] - n[i] * _log1pexp(eta[i])
    return s - 0.5 * (np.dot(a, a) + np.dot(c, c))


@numba.njit(cache=True)
def _weights(y, n, eta):
    m = y.size
    mu, r, w = np.empty(m), np.empty(m), np.empty(m)
    for i in range(m):
        mu[i] = _expit(eta[i])
        r[i] = y[i] - n[i] * mu[i]
        w[i] = n[i] * mu[i] * (1.0 - mu[i])
    return mu, r, w


@numba.njit(cache=True)
def _blocks(w, patient, n_patients, sp, ss):
    d = 1.0 + ss * ss * w
    b = sp * ss * w
    schur = 1.0 + sp * sp * _psum(w, patient, n_patients) - _psum(b * b / d, patient, n_patients)
    return d, b, schur


@numba.njit(cache=True)
def _solve(d, b, schur, patient, n_patients, qa, qc):
    ua = (qa - _psum(b * qc / d, patient, n_patients)) / schur
    return ua, (qc - b * ua[patient]) / d


@numba.njit(cache=True)
def conditional_modes(y, n, offset, patient, n_patients, sp, ss, a, c):
    """Newton (with step halving) for the conditional modes (a, c) from the start given;
    returns them and the linear predictor."""
    eta = offset + sp * a[patient] + ss * c
    value = _penalized(y, n, eta, a, c)
    for _ in range(MAX_NEWTON):
        _, r, w = _weights(y, n, eta)
        d, b, schur = _blocks(w, patient, n_patients, sp, ss)
        da, dc = _solve(d, b, schur, patient, n_patients,
                        sp * _psum(r, patient, n_patients) - a, ss * r - c)  # fmt: skip
        step = 1.0
        while True:
            a_new, c_new = a + step * da, c + step * dc
            eta_new = offset + sp * a_new[patient] + ss * c_new
            new_value = _penalized(y, n, eta_new, a_new, c_new)
            if new_value >= value - 1e-12 * abs(value) or step < 1e-8:
                break
            step *= 0.5
        a, c, eta, value = a_new, c_new, eta_new, new_value
        biggest = 0.0
        if da.size:
            biggest = np.abs(da).max()
        if dc.size:
            biggest = max(biggest, np.abs(dc).max())
        if step * biggest < NEWTON_TOL:
            break
    return a, c, eta


@numba.njit(cache=True)
def laplace_deviance(y, n, x, xt, patient, n_patients, const, beta, sp, ss, a, c):
    """-2 log L (Laplace) and its exact gradient in (beta, sigma_p, sigma_s), and the
    conditional modes (the next evaluation's start); ``xt`` is ``x.T``, contiguous."""
    a, c, eta = conditional_modes(y, n, x @ beta, patient, n_patients, sp, ss, a, c)
    mu, r, w = _weights(y, n, eta)
    d, b, schur = _blocks(w, patient, n_patients, sp, ss)
    logdet = np.sum(np.log(d)) + np.sum(np.log(schur))
    loglik = const
    for i in range(y.size):
        loglik += y[i] * eta[i] - n[i] * _log1pexp(eta[i])
    dev = -2.0 * loglik + np.dot(a, a) + np.dot(c, c) + logdet

    inv_aa = 1.0 / schur
    inv_aa_i = inv_aa[patient]
    inv_ac = -(b / d) * inv_aa_i
    inv_cc = 1.0 / d + (b / d) ** 2 * inv_aa_i
    lev = sp * sp * inv_aa_i + 2 * sp * ss * inv_ac + ss * ss * inv_cc
    t = lev * w * (1.0 - 2.0 * mu)
    sa, sc = _solve(d, b, schur, patient, n_patients, sp * _psum(t, patient, n_patients), ss * t)
    z = sp * sa[patient] + ss * sc
    wz = w * z
    a_i = a[patient]
    grad = np.empty(beta.size + 2)
    grad[: beta.size] = -2.0 * (xt @ r) + xt @ (t - wz)
    psum_w = _psum(w, patient, n_patients)
    explicit_p = 2 * sp * np.sum(inv_aa * psum_w) + 2 * ss * np.sum(inv_ac * w)
    explicit_s = 2 * ss * np.sum(inv_cc * w) + 2 * sp * np.sum(inv_ac * w)
    grad[beta.size] = (-2.0 * np.sum(r * a_i) + explicit_p + np.sum(t * a_i)
                       + np.sum(sa[patient] * r) - np.sum(wz * a_i))  # fmt: skip
    grad[beta.size + 1] = (-2.0 * np.sum(r * c) + explicit_s + np.sum(t * c)
                           + np.sum(sc * r) - np.sum(wz * c))  # fmt: skip
    return dev, grad, a, c
