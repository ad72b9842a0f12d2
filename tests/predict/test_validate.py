"""Nested cross-validation: the same predictions as scikit-learn with the chosen
penalties, stratified patient-level folds, and the honesty checks on simulated cohorts
(the abundance-table simulator: the same design and planted effects as the cell-level
one)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.config import SimulationConfig
from pipeline.config_analysis import PredictConfig
from pipeline.labels import B_SUBSETS
from pipeline.predict import (
    CVSettings,
    auc,
    composition_features,
    fit_model,
    nested_cv,
    outer_splits,
)
from pipeline.simulate import design_cohort, simulate_count_table

# cheap settings for the many-cohort checks (the stage's defaults cost ~50x more per cohort;
# benchmarks/predict_calibration.py runs them)
FAST = PredictConfig(folds=4, repeats=1, penalties=[0.01, 0.1, 1.0, 10.0], permutations=199,
                     bootstrap=400)  # fmt: skip


def cohort_features(
    seed: int, n_patients: int, *, planted: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    cfg = SimulationConfig(seed=seed, n_patients=n_patients, **({} if planted else {"effects": []}))
    counts = simulate_count_table(cfg)
    table = composition_features(counts, pseudocount=0.5)
    response = counts.drop_duplicates("patient_id").set_index("patient_id")["response"]
    y = (response.loc[table.index] == "non_responder").to_numpy(dtype=int)
    return table, y


def test_out_of_fold_predictions_equal_scikit_learns() -> None:
    table, y = cohort_features(0, 30, planted=True)
    x = table.to_numpy()
    settings = CVSettings(folds=5, repeats=2, seed=3)
    cv = nested_cv(x, y, settings)
    train = cv.models.train[0]
    sums, n = np.zeros(len(y)), np.zeros(len(y))
    for s in range(train.shape[0]):
        scaler = StandardScaler().fit(x[train[s]])
        model = LogisticRegression(C=cv.models.c[0, s], tol=1e-10, max_iter=100_000)
        model.fit(scaler.transform(x[train[s]]), y[train[s]])
        test = ~train[s]
        sums[test] += model.predict_proba(scaler.transform(x[test]))[:, 1]
        n[test] += 1
    np.testing.assert_allclose(cv.oof[0], sums / n, atol=1e-5)


def test_folds_are_stratified_and_cover_every_patient_once_per_repeat() -> None:
    y = np.array([1] * 13 + [0] * 20)
    settings = CVSettings(folds=5, repeats=3, seed=1)
    train = outer_splits(y, settings)
    assert train.shape == (15, 33)
    for r in range(3):
        test = ~train[r * 5 : (r + 1) * 5]
        np.testing.assert_array_equal(test.sum(axis=0), 1)
        per_fold = test[:, y == 1].sum(axis=1)
        assert per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(train, outer_splits(y, settings))  # seeded
    assert outer_splits(y[:12], CVSettings(loo_below=20)).shape == (12, 12)  # leave-one-out


@pytest.mark.slow
def test_permutation_pvalue_is_uniform_and_the_interval_covers_half_under_the_null() -> None:
    """200 null cohorts (no planted effect; 24 patients): the share of permutation
    p-values below 0.05 lies in [0.02, 0.08] and the AUC's 95% interval covers 0.5 in at
    least 90% of the cohorts."""
    pvalues, covered = [], []
    for seed in range(200):
        table, y = cohort_features(10_000 + seed, 24, planted=False)
        fit = fit_model(table, y, FAST, client=None, name="composition")
        pvalues.append(fit.metrics["permutation_pvalue"])
        covered.append(fit.metrics["auc_ci_low"] <= 0.5 <= fit.metrics["auc_ci_high"])
    share = float(np.mean(np.array(pvalues) < 0.05))
    assert 0.02 <= share <= 0.08, share
    assert np.mean(covered) >= 0.90, np.mean(covered)


@pytest.mark.slow
def test_a_planted_baseline_dn2_difference_is_found() -> None:
    """44 patients, the simulator's planted DN2 difference (log-ratio +0.8 in
    non-responders): DN2 is the top feature and the cross-validated AUC is what the effect
    allows. The AUC of the true DN2 share is ~0.89 over these cohorts (the ceiling); with
    the 15 other composition features and training on 4/5 of the patients, the model's is
    ~0.76 (measured over 20 cohorts: docs/benchmarks.md)."""
    aucs, oracle, top = [], [], []
    for seed in range(20):
        cfg = SimulationConfig(seed=500 + seed, n_patients=44)
        counts = simulate_count_table(cfg)
        table, y = cohort_features(500 + seed, 44, planted=True)
        fit = fit_model(table, y, FAST.model_copy(update={"permutations": 0}), client=None,
                        name="composition")  # fmt: skip
        aucs.append(fit.metrics["auc"])
        top.append(fit.coefficients["feature"].iloc[0])
        truth = {s.patient_id: s.b_subset_probs[B_SUBSETS.index("DN2")]
                 for s in design_cohort(cfg).samples if s.timepoint_months == 0}  # fmt: skip
        oracle.append(auc(y, np.array([truth[p] for p in table.index])))
        assert counts["patient_id"].nunique() == 44
    assert np.mean([t == "b_subset:DN2" for t in top]) >= 0.9
    assert np.mean(oracle) - 0.2 <= np.mean(aucs) <= np.mean(oracle)
    assert np.mean(aucs) >= 0.7


@pytest.mark.slow
def test_selection_outside_the_folds_would_be_caught() -> None:
    """The null check has teeth: choosing the 5 features most associated with the labels
    on all patients before cross-validating (a leak) gives permutation p-values below 0.05
    far more often than 8% on null cohorts, and the AUC's interval misses 0.5."""
    rng = np.random.default_rng(7)
    leaky_p, covered = [], []
    for seed in range(50):
        table, y = cohort_features(20_000 + seed, 24, planted=False)
        noise = pd.DataFrame(rng.normal(size=(len(table), 40)), index=table.index,
                             columns=[f"noise{i}" for i in range(40)])  # fmt: skip
        wide = table.join(noise)
        t = wide[y == 1].mean() - wide[y == 0].mean()
        t /= np.sqrt(wide[y == 1].var() / (y == 1).sum() + wide[y == 0].var() / (y == 0).sum())
        chosen = t.abs().sort_values(ascending=False).index[:5]
        fit = fit_model(wide[chosen], y, FAST, client=None, name="leaky")
        leaky_p.append(fit.metrics["permutation_pvalue"])
        covered.append(fit.metrics["auc_ci_low"] <= 0.5 <= fit.metrics["auc_ci_high"])
    assert np.mean(np.array(leaky_p) < 0.05) > 0.3
    assert np.mean(covered) < 0.8
