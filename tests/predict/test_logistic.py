"""The batched penalized logistic regression against scikit-learn, and its approximate
leave-one-out loss against exact leave-one-out refits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.predict import fit_logistic, loo_logloss, standardize


def _problems(seed: int, b: int = 40, n: int = 36, p: int = 12) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, n, p)) * rng.uniform(0.5, 3.0, p)
    y = (rng.random((b, n)) < 1 / (1 + np.exp(-x[:, :, 0] / 2))).astype(float)
    weight = (rng.random((b, n)) < 0.8).astype(float)
    c = 10 ** rng.uniform(-3, 2, b)
    return x, y, weight, c


def test_coefficients_equal_scikit_learns() -> None:
    x, y, weight, c = _problems(0)
    xs, mean, scale = standardize(x, weight)
    coef, intercept = fit_logistic(xs, y, weight, c)
    for i in range(len(c)):
        rows = weight[i] > 0
        scaler = StandardScaler().fit(x[i][rows])
        np.testing.assert_allclose(mean[i], scaler.mean_, atol=1e-12)
        np.testing.assert_allclose(scale[i], scaler.scale_, atol=1e-12)
        ref = LogisticRegression(C=c[i], tol=1e-10, max_iter=100_000)
        ref.fit(scaler.transform(x[i][rows]), y[i][rows])
        np.testing.assert_allclose(coef[i], ref.coef_[0], atol=2e-5)
        np.testing.assert_allclose(intercept[i], ref.intercept_[0], atol=2e-5)


def test_rows_with_zero_weight_do_not_count() -> None:
    x, y, weight, c = _problems(1, b=5)
    xs, _, _ = standardize(x, weight)
    coef, intercept = fit_logistic(xs, y, weight, c)
    flipped = np.where(weight > 0, y, 1 - y)  # change only the left-out rows' labels
    coef2, intercept2 = fit_logistic(xs, flipped, weight, c)
    np.testing.assert_array_equal(coef, coef2)
    np.testing.assert_array_equal(intercept, intercept2)


@pytest.mark.parametrize(("c", "tolerance"), [(0.01, 0.01), (0.1, 0.01), (1.0, 0.03)])
def test_approximate_leave_one_out_is_close_to_exact(c: float, tolerance: float) -> None:
    """Within 1% of the exact loss under the penalties the inner loop mostly chooses,
    3% with a weak one (the approximation loosens as the penalty weakens)."""
    rng = np.random.default_rng(2)
    n, p = 40, 10
    x = rng.normal(size=(n, p))
    y = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    one = np.ones((1, n))
    coef, intercept = fit_logistic(x[None], y[None], one, np.array([c]))
    approx = loo_logloss(x[None], y[None], one, np.array([c]), coef, intercept)[0]
    left_out = 1.0 - np.eye(n)
    coefs, intercepts = fit_logistic(
        np.repeat(x[None], n, 0), np.repeat(y[None], n, 0), left_out, np.full(n, c)
    )
    eta = (x * coefs).sum(axis=1) + intercepts
    exact = float(np.mean(np.logaddexp(0.0, eta) - y * eta))
    assert abs(approx - exact) < tolerance * exact


def test_penalty_choice_agrees_with_exact_leave_one_out() -> None:
    """Over a grid, the penalty with the lowest approximate loss has an exact
    leave-one-out loss within 2% of the best exact one."""
    rng = np.random.default_rng(3)
    grid = np.array([0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0])
    for _ in range(5):
        n, p = 35, 16
        x = rng.normal(size=(n, p))
        y = (rng.random(n) < 1 / (1 + np.exp(-0.8 * x[:, 0]))).astype(float)
        xs = np.repeat(x[None], grid.size, 0)
        ys = np.repeat(y[None], grid.size, 0)
        w = np.ones((grid.size, n))
        coef, intercept = fit_logistic(xs, ys, w, grid)
        approx = loo_logloss(xs, ys, w, grid, coef, intercept)
        exact = []
        for c in grid:
            cs, ics = fit_logistic(np.repeat(x[None], n, 0), np.repeat(y[None], n, 0),
                                   1.0 - np.eye(n), np.full(n, c))  # fmt: skip
            eta = (x * cs).sum(axis=1) + ics
            exact.append(float(np.mean(np.logaddexp(0.0, eta) - y * eta)))
        assert exact[int(np.argmin(approx))] <= 1.02 * min(exact)
