"""The binomial GLMM against lme4's own answers (tests/abundance/data/glmm_reference:
datasets, the R script that fitted them with lme4 1.1-31 and its results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.abundance import fit_binomial_glmm, model_design
from pipeline.abundance._glmm import _Laplace

REFERENCE = Path(__file__).parent / "data" / "glmm_reference"
LME4 = json.loads((REFERENCE / "lme4_results.json").read_text())["datasets"]


def _fit(name: str):
    expected = LME4[name]
    data = pd.read_csv(REFERENCE / expected["file"])
    time = "continuous" if name == "continuous" else "factor"
    design = model_design(data, time=time)
    fit = fit_binomial_glmm(data["count"], data["total"], design.x, design.patient)
    return expected, design, fit


@pytest.mark.parametrize("name", sorted(LME4))
def test_matches_lme4(name: str) -> None:
    expected, design, fit = _fit(name)
    # our columns carry lme4's names, in any order
    assert set(design.columns) == set(expected["fixef_names"])
    order = [design.columns.index(n) for n in expected["fixef_names"]]
    beta = fit.beta[order]
    se = np.sqrt(np.diag(fit.vcov))[order]
    np.testing.assert_allclose(beta, [expected["fixef"][n] for n in expected["fixef_names"]],
                               atol=5e-4)  # fmt: skip
    np.testing.assert_allclose(se, [expected["se"][n] for n in expected["fixef_names"]],
                               rtol=1e-2)  # fmt: skip
    vcov = np.asarray(expected["vcov"])
    np.testing.assert_allclose(fit.vcov[np.ix_(order, order)], vcov, rtol=2e-2, atol=1e-5)
    assert fit.sd_patient == pytest.approx(expected["re_sd"]["patient_id"], abs=1e-3)
    assert fit.sd_sample == pytest.approx(expected["re_sd"]["sample_id"], abs=1e-3)
    # the same likelihood (binomial constants included), at least as high an optimum
    assert fit.loglik == pytest.approx(expected["logLik"], abs=1e-3)
    assert fit.loglik >= expected["logLik"] - 1e-5
    assert fit.converged and not fit.warnings


def test_boundary_fit_is_the_glm() -> None:
    """Without patient or sample variation lme4 puts both SDs at 0; so do we."""
    _, _, fit = _fit("boundary")
    assert fit.sd_patient == 0.0 and fit.sd_sample == 0.0


@pytest.mark.parametrize("name", ["factor_44", "missing_samples"])
def test_gradient_is_exact(name: str) -> None:
    expected = LME4[name]
    data = pd.read_csv(REFERENCE / expected["file"])
    design = model_design(data)
    objective = _Laplace(data["count"].to_numpy(), data["total"].to_numpy(), design.x,
                         design.patient)  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(3):
        params = np.concatenate([rng.normal(-1.0, 0.5, design.x.shape[1]),
                                 rng.uniform(0.1, 1.0, 2)])  # fmt: skip
        _, grad = objective.deviance(params)
        h = 1e-6
        numeric = [(objective.deviance(params + e)[0] - objective.deviance(params - e)[0]) / (2 * h)
                   for e in np.eye(params.size) * h]  # fmt: skip
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-4)


def test_does_not_stop_at_a_false_zero_variance() -> None:
    """The deviance is even in each SD, so SD = 0 is a stationary point; starting there,
    the fit must still find the positive optimum lme4 finds."""
    expected = LME4["missing_samples"]
    data = pd.read_csv(REFERENCE / expected["file"])
    design = model_design(data)
    fit = fit_binomial_glmm(data["count"], data["total"], design.x, design.patient)
    objective = _Laplace(data["count"].to_numpy(), data["total"].to_numpy(), design.x,
                         design.patient)  # fmt: skip
    at_zero = np.concatenate([fit.beta, [fit.sd_patient, 0.0]])
    assert objective.deviance(at_zero)[1][-1] == pytest.approx(0.0, abs=1e-6)
    assert fit.sd_sample == pytest.approx(expected["re_sd"]["sample_id"], abs=1e-3)


def test_non_convergence_falls_back_and_says_so() -> None:
    """An optimizer stopped early is restarted, then replaced by Nelder-Mead; the notes
    name each fallback and the result is still lme4's optimum within a loose tolerance."""
    expected = LME4["factor_44"]
    data = pd.read_csv(REFERENCE / expected["file"])
    design = model_design(data)
    fit = fit_binomial_glmm(data["count"], data["total"], design.x, design.patient, max_iter=3)
    assert any("did not converge" in w for w in fit.warnings)
    assert fit.optimizer == "Nelder-Mead" and any("Nelder-Mead" in w for w in fit.warnings)
    assert fit.loglik == pytest.approx(expected["logLik"], abs=0.5)
