"""Cohort design: patients, batches, true proportions and contrasts."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SimulationConfig
from pipeline.simulate import design_cohort


def test_design_follows_the_study_layout() -> None:
    design = design_cohort(SimulationConfig(seed=3))
    samples = pd.DataFrame([s.__dict__ for s in design.samples])
    assert len(samples) == 44 * 3
    per_patient = samples.groupby("patient_id")["timepoint_months"].apply(sorted)
    assert all(tps == [0, 3, 6] for tps in per_patient)
    assert samples.groupby("patient_id")["response"].nunique().eq(1).all()
    assert (design.patients["response"] == "responder").sum() == 22
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", s) for s in samples["sample_id"])
    assert samples["sample_id"].is_unique
    # 90% female in expectation; 44 draws give 40 +- 2 (binomial sd), so [33, 44] is safe.
    assert 33 <= (design.patients["sex"] == "F").sum() <= 44
    assert 7000 < samples["n_cells"].median() < 8000


def test_batches_are_partly_crossed_with_time_and_late_patients_form_their_own() -> None:
    design = design_cohort(SimulationConfig(seed=1, n_patients=12, extra_patients=3, n_batches=3))
    samples = pd.DataFrame([s.__dict__ for s in design.samples])
    main = samples[~samples["late"]]
    # every batch holds several timepoints, every timepoint spans several batches
    assert main.groupby("batch")["timepoint_months"].nunique().min() >= 2
    assert main.groupby("timepoint_months")["batch"].nunique().min() >= 2
    # both response groups in every batch (no batch confounded with response)
    assert main.groupby("batch")["response"].nunique().min() == 2
    late = samples[samples["late"]]
    assert late["patient_id"].nunique() == 3
    assert late["batch"].nunique() == 1 and late["batch"].iloc[0] not in set(main["batch"])


def test_sample_proportions_are_probabilities() -> None:
    design = design_cohort(SimulationConfig(seed=2))
    for s in design.samples:
        assert np.isclose(sum(s.lineage_probs), 1.0) and min(s.lineage_probs) > 0
        assert np.isclose(sum(s.b_subset_probs), 1.0) and min(s.b_subset_probs) > 0


def _contrast(design, cell_type: str, contrast: str, denominator: str = "B") -> float:
    c = design.contrasts
    row = c[(c.cell_type == cell_type) & (c.contrast == contrast) & (c.denominator == denominator)]
    assert len(row) == 1
    return float(row["true_log_odds"].iloc[0])


def test_planted_effects_show_in_true_contrasts() -> None:
    design = design_cohort(SimulationConfig(seed=0))
    # DN2 higher in non-responders at baseline, falling only in responders (planted -0.8
    # on the log-ratio scale; naive and transitional falling too leaves about -0.5 log-odds)
    assert _contrast(design, "DN2", "response@month0") > 0.6
    assert _contrast(design, "DN2", "time6@responder") < -0.4
    # not falling in non-responders (it rises a little as naive B shrink: compositional)
    assert _contrast(design, "DN2", "time6@non_responder") > -0.1
    assert _contrast(design, "DN2", "response:time6") > 0.5
    # naive B falls in both groups
    assert _contrast(design, "naive", "time6@responder") < -0.3
    assert _contrast(design, "naive", "time6@non_responder") < -0.3
    # contrast names follow docs/contracts.md
    names = set(design.contrasts["contrast"])
    assert names == {
        "response@month0", "response@month3", "response@month6", "time3@responder",
        "time6@responder", "time3@non_responder", "time6@non_responder",
        "response:time3", "response:time6",
    }  # fmt: skip


def test_null_mode_has_no_true_effects() -> None:
    design = design_cohort(SimulationConfig(seed=0, effects=[]))
    assert np.allclose(design.contrasts["true_log_odds"], 0.0)
    assert design.effects.empty


def test_design_is_deterministic_under_a_seed() -> None:
    a = design_cohort(SimulationConfig(seed=5))
    b = design_cohort(SimulationConfig(seed=5))
    c = design_cohort(SimulationConfig(seed=6))
    assert a.samples == b.samples
    assert a.samples != c.samples


def test_patient_random_effects_make_samples_of_a_patient_alike() -> None:
    """Repeated measures: within-patient spread of B share is below between-patient spread."""
    design = design_cohort(SimulationConfig(seed=4, effects=[]))
    frame = pd.DataFrame(
        {
            "patient": [s.patient_id for s in design.samples],
            "logit_b": [
                np.log(p[7] / (1 - p[7])) for p in (s.lineage_probs for s in design.samples)
            ],
        }
    )
    within = frame.groupby("patient")["logit_b"].var().mean()
    between = frame.groupby("patient")["logit_b"].mean().var()
    assert within < between


@pytest.mark.parametrize("bad", [{"timepoints_months": [3, 6]}, {"timepoints_months": [0, 6, 3]}])
def test_timepoints_must_start_at_baseline(bad: dict) -> None:
    with pytest.raises(ValueError, match="baseline 0"):
        SimulationConfig.model_validate(bad)


def test_interferon_scores_are_bounded() -> None:
    design = design_cohort(SimulationConfig(seed=8, n_patients=400))
    scores = np.array([s.ifn_score for s in design.samples])
    assert scores.max() <= 2.5 and scores.min() >= 0
    assert 0.5 < np.median(scores) < 1.2
