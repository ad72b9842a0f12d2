"""Baseline features: centred log-ratios per level, program scores, the features a model
can use, and a clear error for two baseline samples of one patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import SimulationConfig
from pipeline.predict import (
    baseline_samples,
    composition_features,
    program_features,
    usable_features,
)
from pipeline.simulate import simulate_count_table


@pytest.fixture(scope="module")
def counts() -> pd.DataFrame:
    return simulate_count_table(SimulationConfig(seed=4, n_patients=8))


def test_composition_is_the_centred_log_ratio_of_each_level(counts: pd.DataFrame) -> None:
    table = composition_features(counts, pseudocount=0.5)
    assert list(table.index) == sorted(counts["patient_id"].unique())
    for level in ("lineage", "b_subset"):
        block = table[[c for c in table.columns if c.startswith(f"{level}:")]]
        np.testing.assert_allclose(block.sum(axis=1), 0.0, atol=1e-12)
    # one value by hand: DN2 of the first patient's month-0 sample
    first = table.index[0]
    rows = counts[(counts["patient_id"] == first) & (counts["timepoint_months"] == 0)
                  & (counts["level"] == "b_subset") & (counts["cell_type"] != "unassigned")]  # fmt: skip
    logs = np.log(rows.set_index("cell_type")["count"] + 0.5)
    assert table.loc[first, "b_subset:DN2"] == pytest.approx(logs["DN2"] - logs.mean())


def test_program_scores_become_one_feature_per_cell_type_and_program(counts: pd.DataFrame) -> None:
    base = baseline_samples(counts)
    scores = pd.DataFrame([
        {"sample_id": s, "level": "lineage", "cell_type": "B", "program": p, "score": i + k / 10}
        for i, s in enumerate(base["sample_id"]) for k, p in enumerate(["ifn", "upr"])
    ][:-1])  # the last patient lacks one score  # fmt: skip
    table = program_features(scores, counts, cell_types=["B"])
    assert list(table.columns) == ["program:B:ifn", "program:B:upr"]
    assert table["program:B:upr"].isna().sum() == 1
    usable, dropped = usable_features(table.assign(constant=1.0))
    assert list(usable.columns) == ["program:B:ifn"]
    assert dropped == {"program:B:upr": "missing for 1 of 8 patients",
                       "constant": "constant across the patients"}  # fmt: skip


def test_two_baseline_samples_of_one_patient_are_an_error(counts: pd.DataFrame) -> None:
    extra = counts[counts["sample_id"] == counts["sample_id"].iloc[0]].assign(sample_id="again")
    with pytest.raises(ValueError, match="more than one month-0 sample"):
        baseline_samples(pd.concat([counts, extra]))
