"""Design matrix, contrasts and the designs that cannot be fitted."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.abundance import (
    AbundanceDesignError,
    contrast_names,
    estimable_design,
    model_design,
    with_covariate,
)


def _samples(groups: dict[str, str], months=(0, 3, 6)) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"sample_id": f"{p}_m{t}", "patient_id": p, "timepoint_months": t, "response": g}
            for p, g in groups.items()
            for t in months
        ]
    )


GROUPS = {"P1": "responder", "P2": "responder", "P3": "non_responder", "P4": "non_responder"}


def test_contrasts_are_the_design_names_and_combinations() -> None:
    d = model_design(_samples(GROUPS))
    assert d.columns == ("(Intercept)", "responsenon_responder", "timepoint3", "timepoint6",
                         "responsenon_responder:timepoint3", "responsenon_responder:timepoint6")  # fmt: skip
    c = d.contrasts
    assert list(c.index) == ["response@month0", "response@month3", "response@month6",
                             "time3@responder", "time3@non_responder", "time6@responder",
                             "time6@non_responder", "response:time3", "response:time6"]  # fmt: skip
    # a contrast applied to the cell means of the design gives its definition
    beta = np.array([-2.0, 0.5, -0.3, -0.6, 0.2, 0.4])
    mean = {(r, t): d.x[(d.samples["response"] == r) & (d.samples["timepoint_months"] == t)][0]
            @ beta for r in ("responder", "non_responder") for t in (0, 3, 6)}  # fmt: skip
    value = c.to_numpy() @ beta
    got = dict(zip(c.index, value, strict=True))
    assert got["response@month3"] == pytest.approx(mean["non_responder", 3] - mean["responder", 3])
    assert got["time6@non_responder"] == pytest.approx(
        mean["non_responder", 6] - mean["non_responder", 0]
    )
    assert got["response:time6"] == pytest.approx(
        (mean["non_responder", 6] - mean["non_responder", 0])
        - (mean["responder", 6] - mean["responder", 0])
    )
    # between-patient contrasts: patients - 2 df; within: samples - patients - 4
    assert d.df["response@month0"] == 2 and d.df["response@month6"] == 2
    assert d.df["time3@responder"] == 12 - 4 - 4 and d.df["response:time3"] == 4


def test_continuous_time_contrasts_scale_with_months() -> None:
    d = model_design(_samples(GROUPS), time="continuous")
    c = d.contrasts
    assert c.loc["time6@responder", "timepoint_months"] == 6.0
    assert c.loc["response@month3", "responsenon_responder:timepoint_months"] == 3.0


def test_unknown_response_enters_the_model_not_the_contrasts() -> None:
    groups = {**GROUPS, "P5": "unknown", "P6": "unknown"}
    d = model_design(_samples(groups))
    assert "responseunknown" in d.columns and "responseunknown:timepoint3" in d.columns
    assert d.n_unknown_patients == 2 and d.x.shape[0] == 18
    unknown_cols = [c for c in d.columns if "unknown" in c]
    assert (d.contrasts[unknown_cols] == 0).all().all()


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (_samples({"P1": "responder"}), "at least 2 patients; got 1 (P1)"),
        (_samples({"P1": "non_responder", "P2": "non_responder"}), "no patient has response 'responder'"),
        (_samples({"P1": "responder", "P2": "unknown"}), "no patient has response 'non_responder'"),
        (_samples(GROUPS, months=(3, 6)), "no baseline samples"),
        (_samples(GROUPS).query("not (response == 'responder' and timepoint_months == 6)"),
         "no responder samples at month 6"),
        (_samples(GROUPS).assign(response=lambda d: d["response"].where(d.index != 1, "maybe")),
         "'response' has values ['maybe']"),
        (_samples(GROUPS).assign(response=lambda d: d["response"].where(d.index != 1, "non_responder")),
         "more than one 'response' value"),
    ],
)  # fmt: skip
def test_designs_that_cannot_be_fitted(samples: pd.DataFrame, message: str) -> None:
    with pytest.raises(AbundanceDesignError, match=re.escape(message)):
        model_design(samples)


# ---- small and degenerate designs: what can be estimated, and why the rest cannot ------


def test_a_complete_design_is_model_designs_with_nothing_lost() -> None:
    design, lost = estimable_design(_samples(GROUPS))
    assert design is not None and lost == {}
    assert design.columns == model_design(_samples(GROUPS)).columns


def test_one_patient_per_group_leaves_no_degrees_of_freedom() -> None:
    """The pilot: 1 responder and 1 non-responder, 3 timepoints: 6 samples for 6 fixed
    effects; any number printed for a contrast would mean nothing."""
    pilot = {"P1": "responder", "P3": "non_responder"}
    design, lost = estimable_design(_samples(pilot))
    assert design is not None and set(lost) == set(contrast_names([0, 3, 6]))
    assert "(1 responder, 1 non_responder) leave no degrees of freedom" in lost["response@month0"]
    assert lost["time3@responder"].startswith("no samples beyond one per patient")
    # a third patient: 1 df between patients, 9 - 3 - 4 = 2 within
    design, lost = estimable_design(_samples({**pilot, "P2": "responder"}))
    assert design is not None and lost == {}
    assert design.df["response@month0"] == 1 and design.df["time3@responder"] == 2


@pytest.mark.parametrize(
    ("samples", "estimable", "why"),
    [
        (_samples({"P1": "non_responder", "P2": "non_responder"}),
         {"time3@non_responder", "time6@non_responder"}, "no patient has response 'responder'"),
        (_samples({"P1": "responder", "P2": "responder", "P3": "unknown"}),
         {"time3@responder", "time6@responder"}, "no patient has response 'non_responder'"),
        (_samples(GROUPS).query("not (response == 'responder' and timepoint_months == 6)"),
         {"response@month0", "response@month3", "time3@responder", "time3@non_responder",
          "time6@non_responder", "response:time3"}, "no responder samples at month 6"),
        (_samples(GROUPS, months=(3, 6)), {"response@month3", "response@month6"},
         "samples at month 0"),
        (_samples({"P1": "unknown", "P2": "unknown"}), set(),
         "no patient has response 'responder' or 'non_responder'"),
        (_samples({"P1": "responder"}), set(), "at least 2 patients; got 1 (P1)"),
    ],
)  # fmt: skip
def test_degenerate_designs_estimate_what_their_cells_allow(
    samples: pd.DataFrame, estimable: set[str], why: str
) -> None:
    design, lost = estimable_design(samples)
    months = sorted(set(samples["timepoint_months"]))
    assert set(lost) == set(contrast_names(months)) - estimable
    assert all(why in reason for reason in lost.values() if "degrees" not in reason), lost
    if estimable:
        assert design is not None
        assert estimable <= set(design.contrasts.index) - set(design.not_estimable)


def test_cell_means_give_the_treatment_coded_contrasts() -> None:
    """The cell-means design degenerate cohorts are fitted with spans the same space as
    the full design: on a complete cohort the same GLMM gives the same contrasts."""
    from pipeline.abundance import contrast_table, fit_binomial_glmm
    from pipeline.abundance._design import _cell_means_design

    samples = _samples({**GROUPS, "P5": "responder", "P6": "non_responder"})
    rng = np.random.default_rng(3)
    total = rng.integers(300, 600, len(samples)).astype(float)
    count = rng.binomial(total.astype(int), 0.1 + 0.05 * (samples["response"] == "responder"))
    full = model_design(samples)
    cells = _cell_means_design(samples, [0.0, 3.0, 6.0], list(full.contrasts.index))
    assert cells is not None and cells.not_estimable == {}
    pd.testing.assert_series_equal(cells.df, full.df)
    got = {}
    for name, d in (("full", full), ("cells", cells)):
        fit = fit_binomial_glmm(count.astype(float), total, d.x, d.patient)
        got[name] = contrast_table(fit.beta, fit.vcov, d.contrasts, d.df).set_index("contrast")
    pd.testing.assert_frame_equal(got["cells"], got["full"], rtol=1e-3, atol=1e-4)


def _with_batches(groups: dict[str, str], batch_of) -> pd.DataFrame:
    samples = _samples(groups)
    samples["batch"] = [batch_of(p, t) for p, t in zip(samples["patient_id"],
                                                       samples["timepoint_months"], strict=True)]  # fmt: skip
    return samples


SIX = {"P1": "responder", "P2": "responder", "P3": "responder",
       "P4": "non_responder", "P5": "non_responder", "P6": "non_responder"}  # fmt: skip


def test_a_batch_covariate_enters_no_contrast_and_costs_its_degrees_of_freedom() -> None:
    """Batches rotating over timepoints (a patient's samples in consecutive batches) vary
    within patients: each of their columns costs the within-patient contrasts one degree
    of freedom, the contrasts and their cells are unchanged."""
    waves = {"P1": 0, "P2": 1, "P3": 2, "P4": 0, "P5": 1, "P6": 2}
    samples = _with_batches(SIX, lambda p, t: f"b{(waves[p] + t // 3) % 3}")
    design = model_design(samples)
    adjusted, why = with_covariate(design, samples["batch"], "batch")
    assert why is None
    assert adjusted.columns == (*design.columns, "batchb1", "batchb2")
    assert adjusted.covariates == ("batchb1", "batchb2")
    np.testing.assert_array_equal(adjusted.x[:, :6], design.x)
    assert (adjusted.contrasts[["batchb1", "batchb2"]] == 0).all().all()
    pd.testing.assert_frame_equal(adjusted.cell_weights(), design.cell_weights())
    between = [c for c in design.df.index if c.startswith("response@")]
    within = [c for c in design.df.index if c not in between]
    assert (adjusted.df[between] == design.df[between]).all()
    assert (adjusted.df[within] == design.df[within] - 2).all()


def test_a_batch_per_patient_costs_the_between_patient_contrasts() -> None:
    batch = {"P1": "x", "P2": "y", "P3": "x", "P4": "y", "P5": "x", "P6": "y"}
    samples = _with_batches(SIX, lambda p, t: batch[p])
    design = model_design(samples)
    adjusted, why = with_covariate(design, samples["batch"], "batch")
    assert why is None and adjusted.covariates == ("batchy",)
    assert adjusted.df["response@month0"] == design.df["response@month0"] - 1 == 3
    assert adjusted.df["time3@responder"] == design.df["time3@responder"]


@pytest.mark.parametrize(
    ("batch_of", "groups", "reason"),
    [
        # every timepoint its own batch: batch is time
        (lambda p, t: f"month{t}", SIX, "batch is confounded with response and time"),
        # responders in one batch, non-responders in the other: batch is response
        (lambda p, t: SIX[p], SIX, "batch is confounded with response and time"),
        # a batch per patient and two patients per group: nothing left between patients
        (lambda p, t: p, GROUPS, "batch is confounded with response and time"),
        # three patients, one degree of freedom between them, which the batch would take
        (
            lambda p, t: "y" if p == "P2" else "x",
            {"P1": "responder", "P2": "responder", "P3": "non_responder"},
            "too few samples to adjust for batch",
        ),
    ],
)
def test_a_confounded_batch_is_not_adjusted_and_says_why(batch_of, groups, reason) -> None:
    samples = _with_batches(groups, batch_of)
    design = model_design(samples)
    adjusted, why = with_covariate(design, samples["batch"], "batch")
    assert adjusted is design and why is not None and reason in why


def test_one_batch_needs_no_adjustment_and_a_wrong_length_is_an_error() -> None:
    samples = _with_batches(GROUPS, lambda p, t: "only")
    design = model_design(samples)
    assert with_covariate(design, samples["batch"], "batch") == (design, None)
    with pytest.raises(AbundanceDesignError, match="3 values of 'batch' for a design of 12"):
        with_covariate(design, samples["batch"][:3], "batch")
