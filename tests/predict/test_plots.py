"""The predict stage's figure and its ROC curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.predict import auc, prediction_figure, roc_curve


def test_roc_curve_area_is_the_auc_ties_included() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    score = np.round(rng.normal(size=40) + y, 1)  # ties
    fpr, tpr = roc_curve(y, score)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(float(auc(y, score)), abs=1e-12)


def test_prediction_figure_has_its_four_panels() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(10), np.zeros(10)].astype(int)
    score = y + rng.normal(size=20)
    patients = pd.DataFrame({
        "patient_id": [f"P{i}" for i in range(21)],
        "response": ["non_responder" if v else "responder" for v in y] + ["unknown"],
        "p_non_responder": np.r_[1 / (1 + np.exp(-score)), 0.5], "fold": [*range(20), np.nan],
        "score": np.r_[score, np.nan],
    })  # fmt: skip
    metrics = {"auc": float(auc(y, score)), "auc_ci_low": 0.5, "auc_ci_high": 0.95,
               "calibration": [{"mean_predicted": 0.3, "observed": 0.2, "n": 10},
                               {"mean_predicted": 0.7, "observed": 0.8, "n": 10}]}  # fmt: skip
    coefficients = pd.DataFrame({"feature": ["b_subset:DN2", "lineage:B"],
                                 "coefficient": [0.8, -0.1], "cv_mean": [0.7, -0.1],
                                 "cv_sd": [0.2, 0.3], "sign_agreement": [1.0, 0.6]})  # fmt: skip
    fig = prediction_figure(patients, metrics, coefficients)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "Out-of-fold ROC (non-response)",
        "Calibration",
        "Coefficients",
        "Per patient",
    ]
    assert f"AUC {metrics['auc']:.2f}" in fig.axes[0].get_legend().get_texts()[1].get_text()
