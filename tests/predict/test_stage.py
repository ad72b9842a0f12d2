"""The predict stage on the small cohort analysed by `immunoprofile run` (3 responders, 3
non-responders): skipped with its reason under the default minimum of 5 per class, and
fitted (leave-one-out) by `immunoprofile predict` when the minimum is lowered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.predict import auc
from pipeline.stages import run_stage

from ..conftest import ANALYSED_CONFIG, CommandRun

METRICS = {"auc", "auc_ci_low", "auc_ci_high", "permutation_pvalue", "brier", "n_responder",
           "n_non_responder", "features"}  # fmt: skip


def test_too_few_patients_skip_the_stage_with_the_reason(analysed_small: CommandRun) -> None:
    code, out, _ = analysed_small.run
    assert code == 0
    assert "predict: skipped: 3 responders and 3 non-responders" in out
    metrics = json.loads((analysed_small.workdir / "predict" / "metrics.json").read_text())
    assert METRICS <= set(metrics) and metrics["auc"] is None
    assert "predict.min_patients_per_class" in metrics["skipped"]
    assert not (analysed_small.workdir / "predict" / "model.json").exists()


@pytest.fixture(scope="module")
def predicted(analysed_small: CommandRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`immunoprofile predict` on a copy of the analysed workdir, 3 patients per class
    allowed (leave-one-out below 20 patients)."""
    root = tmp_path_factory.mktemp("predicted")
    shutil.copytree(analysed_small.workdir, root / "w")
    config = {**yaml.safe_load(ANALYSED_CONFIG), "workdir": str(root / "w"),
              "predict": {"min_patients_per_class": 3, "permutations": 99}}  # fmt: skip
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["predict", str(root / "c.yaml")]) == 0
    return root / "w"


def test_outputs_follow_the_contract(predicted: Path) -> None:
    folder = predicted / "predict"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert METRICS <= set(metrics)
    assert (metrics["n_responder"], metrics["n_non_responder"]) == (3, 3)
    assert metrics["cv"]["scheme"] == "leave_one_out"
    assert 0 <= metrics["auc_ci_low"] <= metrics["auc"] <= metrics["auc_ci_high"] <= 1
    assert metrics["n_permutations"] == 99
    assert 0.01 <= metrics["permutation_pvalue"] <= 1
    patients = pd.read_csv(folder / "patients.csv")
    assert list(patients.columns) == ["patient_id", "response", "p_non_responder", "fold", "score"]
    assert len(patients) == 6 and sorted(patients["fold"]) == list(range(6))
    assert patients["p_non_responder"].between(0, 1).all()
    features = pd.read_csv(folder / "features.csv", index_col="patient_id")
    assert "b_subset:DN2" in features.columns and len(features) == 6
    assert len(pd.read_csv(folder / "new_patients.csv")) == 0  # no batch added
    y = (patients["response"] == "non_responder").to_numpy(dtype=int)
    assert auc(y, patients["score"].to_numpy()) == pytest.approx(metrics["auc"])
    log = [
        json.loads(line) for line in (predicted / "logs" / "stages.jsonl").read_text().splitlines()
    ]
    assert log[-1]["stage"] == "predict" and log[-1]["status"] == "done"


def test_the_saved_model_is_plain_data_scikit_learn_agrees_with(predicted: Path) -> None:
    """model.json (centre, scale, coefficients, intercept, C) is scikit-learn's L2
    logistic regression of the training patients' features, standardized."""
    model = json.loads((predicted / "predict" / "model.json").read_text())
    features = pd.read_csv(predicted / "predict" / "features.csv", index_col="patient_id")
    patients = pd.read_csv(predicted / "predict" / "patients.csv").set_index("patient_id")
    x = features.loc[patients.index, model["features"]].to_numpy(dtype=float)
    y = (patients["response"] == "non_responder").to_numpy(dtype=int)
    np.testing.assert_allclose(model["centre"], x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(model["scale"], x.std(axis=0), atol=1e-12)
    ref = LogisticRegression(C=model["penalty_C"], tol=1e-10, max_iter=100_000)
    ref.fit((x - x.mean(axis=0)) / x.std(axis=0), y)
    np.testing.assert_allclose(model["coefficients"], ref.coef_[0], atol=1e-5)
    np.testing.assert_allclose(model["intercept"], ref.intercept_[0], atol=1e-5)
    assert len(model["cv_models"]) == 6 and len(model["training_cohort_digest"]) == 64
    assert set(model["training_range"]) == {"low", "high"}


def test_predict_refuses_a_workdir_whose_earlier_stages_are_not_current(
    predicted: Path, tmp_path: Path
) -> None:
    shutil.copytree(predicted, tmp_path / "w")
    config = {**yaml.safe_load(ANALYSED_CONFIG), "workdir": str(tmp_path / "w"),
              "abundance": {"alpha": 0.1}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["predict", str(tmp_path / "c.yaml")]) != 0
    before = (predicted / "predict" / "metrics.json").read_bytes()
    assert (tmp_path / "w" / "predict" / "metrics.json").read_bytes() == before


def test_the_report_shows_the_fitted_model(predicted: Path) -> None:
    config = {**yaml.safe_load(ANALYSED_CONFIG), "workdir": str(predicted)}
    assert "report: " in run_stage("report", parse_config(config))
    html = (predicted / "report" / "index.html").read_text()
    metrics = json.loads((predicted / "predict" / "metrics.json").read_text())
    assert f"out-of-fold AUC of {metrics['auc']:.2f}" in html
    assert "Left to right: the out-of-fold ROC curve" in html
    assert "Coefficients and their stability over the outer folds" in html


def test_program_scores_join_the_composition_and_both_models_are_reported(
    predicted: Path, tmp_path: Path
) -> None:
    shutil.copytree(predicted, tmp_path / "w")
    config = {**yaml.safe_load(ANALYSED_CONFIG), "workdir": str(tmp_path / "w"),
              "predict": {"min_patients_per_class": 3, "permutations": 19,
                          "features": ["composition", "programs"]}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["predict", str(tmp_path / "c.yaml")]) == 0
    metrics = json.loads((tmp_path / "w" / "predict" / "metrics.json").read_text())
    assert metrics["model"] == "composition+programs"
    assert set(metrics["models"]) == {"composition", "composition+programs"}
    programs = [f for f in metrics["features"] if f.startswith("program:B:")]
    assert programs and any(f.startswith("b_subset:") for f in metrics["features"])
    assert 0 <= metrics["models"]["composition"]["auc"] <= 1
    features = pd.read_csv(tmp_path / "w" / "predict" / "features.csv", index_col="patient_id")
    assert set(programs) <= set(features.columns)
