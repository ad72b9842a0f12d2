"""The propeller approach (Phipson et al., Bioinformatics 2022) as the second method:
transformed sample proportions in a linear mixed model with the patient as random
intercept (statsmodels ``MixedLM``, REML), fitted per cell type.

Transformations as in speckle's ``getTransformedProps``: ``logit`` of the proportion
with 0.5 added to the count (estimates on the log-odds scale, comparable with the GLMM),
or ``asin`` (arcsine square root; estimates then on that scale). propeller itself pools
the patient correlation across cell types (limma ``duplicateCorrelation``) and moderates
variances; a per-type mixed model is the simpler version the project asks for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

Transform = Literal["logit", "asin"]


@dataclass(frozen=True)
class PropellerFit:
    beta: np.ndarray
    vcov: np.ndarray
    sd_patient: float
    sd_residual: float
    converged: bool
    warnings: tuple[str, ...]


def transformed_proportions(count: np.ndarray, total: np.ndarray, transform: Transform):
    """Logit of (count + 0.5) / (total + 1), or arcsine square root of count / total."""
    count = np.asarray(count, dtype=float)
    total = np.asarray(total, dtype=float)
    if transform == "logit":
        p = (count + 0.5) / (total + 1.0)
        return np.log(p / (1.0 - p))
    if transform == "asin":
        return np.arcsin(np.sqrt(count / total))
    msg = f"propeller transform {transform!r} is not 'logit' or 'asin'"
    raise ValueError(msg)


def fit_propeller(
    count: np.ndarray,
    total: np.ndarray,
    design: np.ndarray,
    patient: np.ndarray,
    *,
    transform: Transform = "logit",
) -> PropellerFit:
    """``transform(count / total) ~ design + (1 | patient)`` by REML (statsmodels)."""
    return fit_lmm(transformed_proportions(count, total, transform), design, patient)


def fit_lmm(y: np.ndarray, design: np.ndarray, patient: np.ndarray) -> PropellerFit:
    """``y ~ design + (1 | patient)`` by REML (statsmodels ``MixedLM``; L-BFGS, Powell
    when it fails or does not converge): any per-sample outcome (transformed proportions,
    expression program scores)."""
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    y = np.asarray(y, dtype=float)
    notes: list[str] = []
    model = MixedLM(y, design, groups=np.asarray(patient))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = model.fit(reml=True, method=["lbfgs"])
        except np.linalg.LinAlgError as err:  # a singular step of the gradient optimizer
            notes.append(f"L-BFGS failed ({err}); fell back to Powell")
            result = model.fit(reml=True, method=["powell"])
        if not result.converged:
            retry = model.fit(reml=True, method=["powell"])
            notes.append("L-BFGS did not converge; fell back to Powell")
            if retry.converged or retry.llf > result.llf:
                result = retry
    for w in caught:
        if issubclass(w.category, ConvergenceWarning | RuntimeWarning | UserWarning):
            notes.append(str(w.message).splitlines()[0])
    k = design.shape[1]
    vcov = np.asarray(result.cov_params())[:k, :k]
    converged = bool(result.converged) and bool(np.all(np.isfinite(vcov)))
    return PropellerFit(
        beta=np.asarray(result.fe_params, dtype=float),
        vcov=vcov,
        sd_patient=float(np.sqrt(max(float(np.asarray(result.cov_re)[0, 0]), 0.0))),
        sd_residual=float(np.sqrt(result.scale)),
        converged=converged,
        warnings=tuple(dict.fromkeys(notes)),
    )
