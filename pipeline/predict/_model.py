"""One prediction model: nested cross-validation, permutation test (in chunks on the
cluster), bootstrap interval, calibration, coefficient stability, the final model on all
training patients, and predictions of patients it was not trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client

from ._logistic import sigmoid
from ._validate import (
    CVSettings,
    SplitModels,
    auc_interval,
    bootstrap_aucs,
    calibration_table,
    fit_splits,
    nested_cv,
    permutation_aucs,
    permutation_pvalue,
    split_decisions,
)

PERMUTATION_CHUNK = 50  # shuffles per task


@dataclass(frozen=True)
class ModelFit:
    name: str
    features: list[str]
    oof: np.ndarray  # training patients' out-of-fold probabilities
    score: np.ndarray  # their out-of-fold linear scores (what the AUC ranks)
    first_folds: np.ndarray  # each training patient's test fold in the first repeat
    metrics: dict[str, Any]
    coefficients: pd.DataFrame
    final: SplitModels  # the model of all training patients (one split)
    cv: SplitModels  # the outer splits' models
    low: np.ndarray  # training range per feature
    high: np.ndarray


def settings_of(params: Any) -> CVSettings:
    return CVSettings(folds=params.folds, repeats=params.repeats,
                      c_grid=tuple(float(c) for c in params.penalties),
                      loo_below=params.loo_below, seed=params.seed)  # fmt: skip


def fit_model(
    table: pd.DataFrame, y: np.ndarray, params: Any, *, client: Client | None, name: str
) -> ModelFit:
    """``table``: training patients x features; ``y``: 1 for a non-responder."""
    settings = settings_of(params)
    x = table.to_numpy(dtype=float)
    y = np.asarray(y, dtype=int)
    cv = nested_cv(x, y, settings)
    observed = float(cv.auc[0])
    null = _permutations(x, y, settings, params.permutations, params.seed, client)
    boot = bootstrap_aucs(y, cv.score[0], n_boot=params.bootstrap, seed=params.seed)
    low, high = auc_interval(observed, boot, null)
    oof = cv.oof[0]
    train = cv.models.train[0]
    first = np.full(y.size, -1)
    per_repeat = train.shape[0] if settings.scheme(y.size) == "leave_one_out" else settings.folds
    for k in range(per_repeat):
        first[~train[k]] = k
    final = fit_splits(x, y[None], np.ones((1, 1, y.size), dtype=bool), settings)
    metrics = {
        "auc": observed,
        "auc_ci_low": low,
        "auc_ci_high": high,
        "auc_ci_method": "normal; sd the larger of the patient bootstrap's and the permutation null's",
        "permutation_pvalue": permutation_pvalue(observed, null) if null.size else None,
        "n_permutations": int(null.size),
        "permuted_auc_mean": float(null.mean()) if null.size else None,
        "brier": float(np.mean((oof - y) ** 2)),
        "calibration": calibration_table(y, oof),
        "cv": {
            "scheme": settings.scheme(y.size),
            "folds": settings.folds,
            "repeats": settings.repeats if settings.scheme(y.size) != "leave_one_out" else 1,
            "chosen_penalties": _counts(cv.models.c[0]),
        },
        "final_penalty": float(final.c[0, 0]),
    }
    return ModelFit(
        name=name,
        features=list(table.columns),
        oof=oof,
        score=cv.score[0],
        first_folds=first,
        metrics=metrics,
        coefficients=_stability(list(table.columns), cv.models, final),
        final=final,
        cv=cv.models,
        low=x.min(axis=0),
        high=x.max(axis=0),
    )


def _counts(values: np.ndarray) -> dict[str, int]:
    uniq, n = np.unique(values, return_counts=True)
    return {f"{u:g}": int(k) for u, k in zip(uniq, n, strict=True)}


def _permutations(
    x: np.ndarray, y: np.ndarray, settings: CVSettings, n: int, seed: int, client: Client | None
) -> np.ndarray:
    """AUCs of ``n`` label shuffles, in chunks (each with its own seed, so that the result
    does not depend on the number of workers)."""
    chunks = [(i, min(PERMUTATION_CHUNK, n - i * PERMUTATION_CHUNK))
              for i in range(-(-n // PERMUTATION_CHUNK))]  # fmt: skip
    seeds = [np.random.SeedSequence(seed, spawn_key=(1, i)) for i, _ in chunks]
    if client is None:
        parts = [
            permutation_aucs(x, y, settings, k, seed=s)
            for (_, k), s in zip(chunks, seeds, strict=True)
        ]
    else:
        [xs, ys] = client.scatter([x, y], broadcast=True, hash=False)
        futures = [client.submit(permutation_aucs, xs, ys, settings, k, seed=s, pure=False)
                   for (_, k), s in zip(chunks, seeds, strict=True)]  # fmt: skip
        parts = client.gather(futures)
    return np.concatenate(parts) if parts else np.zeros(0)


def _stability(features: list[str], cv: SplitModels, final: SplitModels) -> pd.DataFrame:
    """Per feature (standardized units): the final model's coefficient, the outer models'
    mean and sd, and the share of outer models whose coefficient has the final one's sign."""
    coef = cv.coef[0]  # (splits, features)
    sign = np.sign(final.coef[0, 0])
    table = pd.DataFrame({
        "feature": features,
        "coefficient": final.coef[0, 0],
        "cv_mean": coef.mean(axis=0),
        "cv_sd": coef.std(axis=0),
        "sign_agreement": (np.sign(coef) == sign).mean(axis=0),
    })  # fmt: skip
    order = np.argsort(-np.abs(table["coefficient"].to_numpy()), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def predict_patients(fit: ModelFit, table: pd.DataFrame) -> pd.DataFrame:
    """For patients (rows of ``table``, the model's features): the final model's
    probability of non-response, the 2.5-97.5% range of the cross-validation models'
    probabilities, and the features outside the training range."""
    x = table[fit.features].to_numpy(dtype=float)
    p = sigmoid(split_decisions(fit.final, x))[0, 0]
    spread = sigmoid(split_decisions(fit.cv, x))[0]  # (splits, rows)
    outside = []
    for row in x:
        names = [f for f, v, lo, hi in zip(fit.features, row, fit.low, fit.high, strict=True)
                 if not lo <= v <= hi]  # fmt: skip
        outside.append(", ".join(names))
    return pd.DataFrame({"p": p, "low": np.quantile(spread, 0.025, axis=0),
                         "high": np.quantile(spread, 0.975, axis=0), "outside": outside},
                        index=table.index)  # fmt: skip


def model_record(fit: ModelFit, *, training_digest: str) -> dict[str, Any]:
    """The saved model as plain data: enough to predict a patient without this package
    (standardize with centre and scale, then the logistic function)."""

    def splits(m: SplitModels) -> list[dict[str, Any]]:
        return [{"centre": m.mean[0, s].tolist(), "scale": m.scale[0, s].tolist(),
                 "coefficients": m.coef[0, s].tolist(), "intercept": float(m.intercept[0, s]),
                 "penalty_C": float(m.c[0, s])} for s in range(m.coef.shape[1])]  # fmt: skip

    return {
        "kind": "penalized logistic regression (L2), probability of non-response",
        "name": fit.name,
        "features": fit.features,
        **splits(fit.final)[0],
        "training_range": {"low": fit.low.tolist(), "high": fit.high.tolist()},
        "training_cohort_digest": training_digest,
        "metrics": {
            k: fit.metrics[k]
            for k in ("auc", "auc_ci_low", "auc_ci_high", "permutation_pvalue", "brier")
        },
        "cv_models": splits(fit.cv),
    }
