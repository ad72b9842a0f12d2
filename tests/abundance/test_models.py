"""Fitting every cell type: planted effects recovered, methods concordant, the outputs
per docs/contracts.md, q-values, unknown responses and cell types that cannot be fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests

from pipeline.abundance import (
    bh_qvalues,
    concordance,
    contrast_table,
    fit_abundance_models,
)
from pipeline.abundance._models import TEST_COLUMNS
from pipeline.config import SimulationConfig
from pipeline.simulate import design_cohort
from pipeline.simulate._tables import simulate_count_table

STUDY = SimulationConfig(seed=11)  # 44 patients, the default planted effects


@pytest.fixture(scope="module")
def study() -> tuple[pd.DataFrame, object]:
    counts = simulate_count_table(STUDY)
    return counts, fit_abundance_models(counts)


def test_tests_table_follows_design(study) -> None:
    _counts, result = study
    tests = result.tests
    assert tuple(tests.columns) == TEST_COLUMNS
    assert set(tests["method"]) == {"glmm", "propeller"}
    assert set(tests["denominator"]) == {"B", "PBMC"}
    # lineages within PBMC, B subsets within B and within PBMC; 9 contrasts each
    per = tests.groupby(["method", "denominator"])["cell_type"].nunique()
    assert per["glmm", "B"] == 7 and per["glmm", "PBMC"] == 9 + 7
    assert len(tests) == 2 * (7 + 16) * 9
    assert ((tests["ci_low"] < tests["estimate"]) & (tests["estimate"] < tests["ci_high"])).all()
    assert (
        tests["qvalue"].between(0, 1).all() and (tests["qvalue"] >= tests["pvalue"] - 1e-12).all()
    )
    assert result.summary["patients"] == {"responder": 22, "non_responder": 22}
    assert result.fits["converged"].all()


def test_planted_effects_are_recovered(study) -> None:
    """The GLMM's estimates cover the simulator's true contrasts (a typical patient's
    log-odds ratios) and find the planted DN2 difference; null cell types mostly agree."""
    _, result = study
    truth = design_cohort(STUDY).contrasts.rename(columns={"true_log_odds": "truth"})
    glmm = result.tests[result.tests["method"] == "glmm"].merge(
        truth, on=["cell_type", "denominator", "contrast"]
    )
    assert len(glmm) == 23 * 9
    covered = (glmm["ci_low"] <= glmm["truth"]) & (glmm["truth"] <= glmm["ci_high"])
    assert covered.mean() >= 0.88  # 95% intervals (correlated within a cohort)
    dn2 = glmm[(glmm["cell_type"] == "DN2") & (glmm["denominator"] == "B")].set_index("contrast")
    assert dn2.loc["response@month0", "qvalue"] < 0.01
    assert dn2.loc["response@month0", "estimate"] == pytest.approx(0.8, abs=0.3)
    assert dn2.loc["response:time6", "qvalue"] < 0.01  # responders' DN2 falls by month 6
    # no planted lineage effect: all but a few lineage contrasts have q >= 0.05
    lineage = glmm[glmm["denominator"] == "PBMC"]
    assert (
        lineage[lineage["cell_type"].isin(["T_CD4", "NK", "mono_CD14"])]["qvalue"] >= 0.05
    ).all()


def test_glmm_and_propeller_agree(study) -> None:
    _, result = study
    table = concordance(result.tests).set_index("denominator")
    assert (table["pearson_r"] > 0.9).all()
    assert (table["significance_agreement"] > 0.85).all()


def test_contrast_table_and_qvalues() -> None:
    beta, vcov = np.array([1.0, 0.5]), np.array([[0.04, 0.01], [0.01, 0.09]])
    contrasts = pd.DataFrame([[1.0, 0.0], [1.0, 1.0]], index=["a", "b"], columns=["x", "y"])
    table = contrast_table(beta, vcov, contrasts).set_index("contrast")
    se_b = np.sqrt(0.04 + 0.09 + 2 * 0.01)
    assert table.loc["b", "estimate"] == pytest.approx(1.5)
    assert table.loc["b", "ci_high"] == pytest.approx(1.5 + norm.ppf(0.975) * se_b)
    assert table.loc["a", "pvalue"] == pytest.approx(2 * norm.sf(1.0 / 0.2))
    with_df = contrast_table(beta, vcov, contrasts, pd.Series({"a": 5.0, "b": 5.0}))
    assert (with_df["pvalue"].to_numpy() > table["pvalue"].to_numpy()).all()  # t is wider
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.5])
    expected = multipletests(p[~np.isnan(p)], method="fdr_bh")[1]
    np.testing.assert_allclose(bh_qvalues(p)[~np.isnan(p)], expected)
    assert np.isnan(bh_qvalues(p)[4])


def test_unknown_response_is_reported_and_left_out() -> None:
    counts = simulate_count_table(SimulationConfig(seed=3, n_patients=16))
    patients = sorted(counts["patient_id"].unique())[:3]
    counts.loc[counts["patient_id"].isin(patients), "response"] = "unknown"
    result = fit_abundance_models(counts, methods=("glmm",))
    excluded = result.summary["excluded_from_response_contrasts"]
    assert excluded == {"patients": 3, "samples": 9}
    assert "3 patients with response 'unknown'" in result.warnings[0]
    assert set(result.tests["contrast"]) >= {"response@month0", "time3@responder"}


def test_cell_type_without_cells_is_left_out_with_a_warning() -> None:
    counts = simulate_count_table(SimulationConfig(seed=3, n_patients=8))
    counts.loc[counts["cell_type"] == "platelet", "count"] = 0
    result = fit_abundance_models(counts, methods=("glmm",))
    assert "platelet" not in set(result.tests["cell_type"])
    assert any("platelet within PBMC: not fitted, zero cells in every sample" in w
               for w in result.warnings)  # fmt: skip


def test_continuous_time_fits() -> None:
    counts = simulate_count_table(SimulationConfig(seed=4, n_patients=12))
    result = fit_abundance_models(counts, time="continuous", methods=("glmm",))
    assert result.summary["time"] == "continuous"
    assert result.fits["converged"].all()


def test_a_design_cell_without_the_type_makes_its_contrasts_not_estimable() -> None:
    """No DN1 cells in any non-responder at month 6: the GLMM's log-odds there is -inf
    (the fit would report ~-25), so the contrasts using that cell are NaN with a warning;
    the others, and propeller's (pseudo-counts), stay finite."""
    counts = simulate_count_table(SimulationConfig(seed=3, n_patients=8))
    empty = ((counts["cell_type"] == "DN1") & (counts["response"] == "non_responder")
             & (counts["timepoint_months"] == 6))  # fmt: skip
    counts.loc[empty, "count"] = 0
    result = fit_abundance_models(counts)
    dn1 = result.tests[(result.tests["cell_type"] == "DN1") & (result.tests["denominator"] == "B")]
    glmm = dn1[dn1["method"] == "glmm"].set_index("contrast")["estimate"]
    missing = {"response@month6", "time6@non_responder", "response:time6"}
    assert set(glmm.index[glmm.isna()]) == missing
    assert glmm.drop(list(missing)).abs().max() < 3
    assert dn1.loc[dn1["method"] == "propeller", "estimate"].notna().all()
    assert any("DN1 within B (glmm): all or none of the cells in non_responder at month 6" in w
               for w in result.warnings)  # fmt: skip
