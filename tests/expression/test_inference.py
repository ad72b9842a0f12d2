"""The batched solvers give PyDESeq2's per-gene answers (the reference pseudobulk, both
designs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydeseq2.default_inference import DefaultInference

from pipeline.expression import cell_type_designs
from pipeline.expression._inference import BatchedInference, nb_nll

REFERENCE = Path(__file__).parent / "data" / "deseq2_reference"


@pytest.fixture(scope="module", params=["across_patients", "patients_blocked"])
def problem(request: pytest.FixtureRequest):
    counts = pd.read_csv(REFERENCE / "counts.csv", index_col=0)
    samples = pd.read_csv(REFERENCE / "samples.csv")
    fit = next(f for f in cell_type_designs(samples).fits if f.name == request.param)
    y = counts.loc[fit.x.index].to_numpy(dtype=float)[:, :120]
    s = np.exp(np.log(y + 1).mean(axis=1) - np.log(y + 1).mean())
    rng = np.random.default_rng(0)
    disp = np.exp(rng.normal(np.log(0.05), 0.5, y.shape[1]))
    return fit.x.to_numpy(dtype=float), y, s, disp


def test_irls_gives_the_same_coefficients_means_and_leverages(problem) -> None:
    x, y, s, disp = problem
    ours = BatchedInference().irls(y, s, x, disp, min_mu=0.5, beta_tol=1e-8)
    theirs = DefaultInference(n_cpus=1).irls(y, s, x, disp, min_mu=0.5, beta_tol=1e-8)
    for a, b in zip(ours[:3], theirs[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert ours[3].all()


def test_dispersions_reach_at_least_the_same_optimum(problem) -> None:
    """Same objective, same bounds: our minimum is never worse than L-BFGS-B's (by more
    than 1e-4: near the lower bound the objective is flat) and the dispersions agree to 1e-3 (relative) where the objective is not flat."""
    x, y, s, disp = problem
    mu = BatchedInference().irls(y, s, x, disp, min_mu=0.5, beta_tol=1e-8)[1]
    for prior in (False, True):
        kw = {"min_disp": 1e-8, "max_disp": 10.0, "prior_disp_var": 0.5, "prior_reg": prior}
        ours, _ = BatchedInference().alpha_mle(y, x, mu, disp, **kw)
        theirs, _ = DefaultInference(n_cpus=1).alpha_mle(y, x, mu, disp, **kw)

        def objective(a: np.ndarray, prior: bool = prior) -> np.ndarray:
            w = mu / (1 + mu * a)
            gram = np.einsum("ni,ng,nj->gij", x, w, x)
            value = nb_nll(y, mu, a) + 0.5 * np.linalg.slogdet(gram)[1]
            return value + (np.log(a) - np.log(disp)) ** 2 / (2 * 0.5) * prior

        assert (objective(ours) <= objective(theirs) + 1e-4).all()
        clear = (theirs > 1e-6) & (ours > 1e-6)
        np.testing.assert_allclose(ours[clear], theirs[clear], rtol=1e-3)


def test_wald_tests_and_linear_means_are_the_same(problem) -> None:
    x, y, s, disp = problem
    beta, mu, _, _ = BatchedInference().irls(y, s, x, disp, min_mu=0.5, beta_tol=1e-8)
    contrast = np.zeros(x.shape[1])
    contrast[1] = 1.0
    ridge = np.diag(np.full(x.shape[1], 1e-6))
    null = np.zeros(1)
    ours = BatchedInference().wald_test(x, disp, beta, mu, ridge, contrast, null)
    theirs = DefaultInference(n_cpus=1).wald_test(x, disp, beta, mu, ridge, contrast, null)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)
    np.testing.assert_allclose(BatchedInference().lin_reg_mu(y, s, x, 0.5),
                               DefaultInference(n_cpus=1).lin_reg_mu(y, s, x, 0.5), rtol=1e-8)  # fmt: skip


def test_the_log_determinants_derivative_is_the_explicit_trace(problem) -> None:
    """``Gram.Factor.trace_inv`` (the Cox-Reid gradient; block form for the patients-blocked
    design) equals tr(M^-1 X' diag(dw) X) computed from the full matrices."""
    from pipeline.expression._inference import Gram

    x, *_ = problem
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 20, (x.shape[0], 6))
    dw = rng.normal(0, 1, w.shape)
    got = Gram(x).factor(w, 1e-6).trace_inv(dw)
    for g in range(w.shape[1]):
        m = x.T @ (w[:, [g]] * x) + 1e-6 * np.eye(x.shape[1])
        expected = np.trace(np.linalg.solve(m, x.T @ (dw[:, [g]] * x)))
        np.testing.assert_allclose(got[g], expected, rtol=1e-7)
    assert Gram(x).blocked == (x.shape[1] > 20)
