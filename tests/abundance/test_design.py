"""Design matrix, contrasts and the designs that cannot be fitted."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.abundance import AbundanceDesignError, model_design


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
