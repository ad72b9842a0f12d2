"""Prediction of non-response from the baseline samples: penalized logistic regression
under patient-level nested cross-validation, a permutation test, and the saved model's
predictions of patients it was not trained on."""

from ._features import baseline_samples, composition_features, program_features, usable_features
from ._logistic import fit_logistic, loo_logloss, standardize
from ._model import ModelFit, fit_model, model_record, predict_patients
from ._plots import prediction_figure, roc_curve
from ._run import predict_digest_inputs, run_predict
from ._validate import (
    CVSettings,
    auc,
    auc_interval,
    bootstrap_aucs,
    nested_cv,
    outer_splits,
    permutation_aucs,
    permutation_pvalue,
)

__all__ = [
    "CVSettings",
    "ModelFit",
    "auc",
    "auc_interval",
    "baseline_samples",
    "bootstrap_aucs",
    "composition_features",
    "fit_logistic",
    "fit_model",
    "loo_logloss",
    "model_record",
    "nested_cv",
    "outer_splits",
    "permutation_aucs",
    "permutation_pvalue",
    "predict_digest_inputs",
    "predict_patients",
    "prediction_figure",
    "program_features",
    "roc_curve",
    "run_predict",
    "standardize",
    "usable_features",
]
