"""L2-penalized logistic regression for many small problems at once (pure numpy).

The same objective as scikit-learn's ``LogisticRegression(C=c)`` (lbfgs, intercept not
penalized): ``sum_i logloss(y_i, b + x_i w) + ||w||^2 / (2 c)``; each problem has its own
rows (a 0/1 weight per row), its own ``c`` and its own standardization. Newton's method
with step halving, batched over problems: a nested cross-validation of 44 patients with
1,000 permutations is ~10^6 problems of ~35 rows and ~20 features, which scikit-learn
fits one by one at ~1 ms each (benchmarks/predict_permutations.py); here they are a few
batched matrix products per Newton step. tests/predict/test_logistic.py checks the
coefficients against scikit-learn's.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _objective(xa: np.ndarray, y: np.ndarray, w: np.ndarray, beta: np.ndarray,
               penalty: np.ndarray) -> np.ndarray:  # fmt: skip
    eta = np.matmul(xa, beta[:, :, None])[:, :, 0]
    # logloss = log(1 + e^eta) - y eta
    loss = (w * (np.logaddexp(0.0, eta) - y * eta)).sum(axis=1)
    return loss + 0.5 * (penalty * beta * beta).sum(axis=1)


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    c: np.ndarray,
    *,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (problems x features) and intercepts (problems) of ``x`` (problems x
    rows x features, already standardized), ``y`` (problems x rows, 0/1), ``weight``
    (problems x rows: 1 for a training row, 0 to leave it out) and ``c`` (problems: the
    inverse penalty, as scikit-learn's ``C``)."""
    b, n, p = x.shape
    xa = np.concatenate([np.ones((b, n, 1)), x], axis=2)
    y = np.asarray(y, dtype=float)
    w = np.asarray(weight, dtype=float)
    penalty = np.zeros((b, p + 1))
    penalty[:, 1:] = 1.0 / np.asarray(c, dtype=float)[:, None]
    beta = np.zeros((b, p + 1))
    # start the intercept at the training rows' log odds
    share = np.clip((w * y).sum(axis=1) / np.maximum(w.sum(axis=1), 1.0), 1e-6, 1 - 1e-6)
    beta[:, 0] = np.log(share / (1 - share))
    current = _objective(xa, y, w, beta, penalty)
    active = np.ones(b, dtype=bool)
    eye = np.eye(p + 1)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xs, ys, ws, bs, ps = xa[idx], y[idx], w[idx], beta[idx], penalty[idx]
        mu = sigmoid(np.matmul(xs, bs[:, :, None])[:, :, 0])
        grad = np.matmul((ws * (mu - ys))[:, None, :], xs)[:, 0, :] + ps * bs
        xt = np.swapaxes(xs, 1, 2)
        hess = np.matmul(xt * (ws * mu * (1 - mu))[:, None, :], xs)
        hess += ps[:, :, None] * eye
        step = np.linalg.solve(hess + 1e-12 * eye, grad[:, :, None])[:, :, 0]
        # halve the step where the objective would rise (rare with the ridge term)
        t = np.ones(idx.size)
        new = bs - step
        value = _objective(xs, ys, ws, new, ps)
        for _ in range(30):
            worse = value > current[idx] + 1e-12 * np.abs(current[idx])
            if not worse.any():
                break
            t[worse] *= 0.5
            new[worse] = bs[worse] - t[worse, None] * step[worse]
            value[worse] = _objective(xs[worse], ys[worse], ws[worse], new[worse], ps[worse])
        beta[idx] = new
        decrease = current[idx] - value
        current[idx] = value
        done = (np.abs(grad).max(axis=1) < tol) | (decrease <= tol * (1 + np.abs(value)))
        active[idx[done]] = False
    return beta[:, 1:], beta[:, 0]


def standardize(x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per problem, ``x`` (problems x rows x features) centred and scaled by its training
    rows' (``weight`` 1) mean and standard deviation (ddof 0, as scikit-learn's
    StandardScaler; a feature constant among them is scaled by 1): the standardized
    array, the means and the scales."""
    w = np.asarray(weight, dtype=float)[:, :, None]
    n = np.maximum(w.sum(axis=1), 1.0)
    mean = (w * x).sum(axis=1) / n
    var = (w * (x - mean[:, None, :]) ** 2).sum(axis=1) / n
    scale = np.sqrt(var)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return (x - mean[:, None, :]) / scale[:, None, :], mean, scale


def loo_logloss(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    c: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
) -> np.ndarray:
    """Per problem, the mean log loss of leave-one-out predictions of its training rows,
    approximated from the one fit (Rad & Maleki, J R Stat Soc B 2020, "A scalable
    estimate of the out-of-sample prediction error via approximate leave-one-out"):
    ``eta_(-i) = eta_i + h_i (mu_i - y_i) / (1 - h_i mu_i (1 - mu_i))`` with ``h_i`` the
    leverage ``x_i' H^-1 x_i`` under the penalized Hessian ``H``. It chooses the penalty
    from the training rows alone, at the cost of one fit per candidate instead of one per
    candidate and inner fold (tests/predict/test_logistic.py compares it with exact
    leave-one-out refits)."""
    b, n, p = x.shape
    xa = np.concatenate([np.ones((b, n, 1)), x], axis=2)
    beta = np.concatenate([intercept[:, None], coef], axis=1)
    w = np.asarray(weight, dtype=float)
    y = np.asarray(y, dtype=float)
    eta = np.matmul(xa, beta[:, :, None])[:, :, 0]
    mu = sigmoid(eta)
    v = mu * (1 - mu)
    penalty = np.zeros((b, p + 1))
    penalty[:, 1:] = 1.0 / np.asarray(c, dtype=float)[:, None]
    hess = np.matmul(np.swapaxes(xa, 1, 2) * (w * v)[:, None, :], xa)
    hess += penalty[:, :, None] * np.eye(p + 1)
    solved = np.linalg.solve(hess, np.swapaxes(xa, 1, 2))  # (b, p+1, n)
    h = np.einsum("bnp,bpn->bn", xa, solved)
    loo = eta + h * (mu - y) / np.maximum(1.0 - h * v, 1e-12)
    loss = np.logaddexp(0.0, loo) - y * loo
    return (w * loss).sum(axis=1) / np.maximum(w.sum(axis=1), 1.0)
