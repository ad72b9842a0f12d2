"""Calibration and power on the Dask cluster (a small version of `immunoprofile power`;
the full run with >= 1,000 null cohorts is in docs/benchmarks.md)."""

from __future__ import annotations

import pandas as pd
import pytest
from distributed import Client

from pipeline.abundance import run_power
from pipeline.abundance._power import wilson_interval
from pipeline.config import PowerConfig, SimulationConfig

SIM = SimulationConfig(seed=1)  # the study's design: 44 patients x 3 timepoints


@pytest.mark.slow  # ~14 s of simulated studies (the default suite's time budget)
def test_type1_error_and_power(client: Client) -> None:
    """Under the null every contrast keeps its size; a 0.8 log-odds DN2 difference is
    found in >= 80% of 44-patient cohorts and less often with 10 patients."""
    cfg = PowerConfig(n_cohorts=40, power_cohorts=30, patients=[10, 44], cohorts_per_task=10)
    result = run_power(SIM, cfg, client=client)
    type1 = result.type1.set_index("contrast")
    assert (type1["tests"] == 40 * 23).all()  # 23 cell type x denominator models per cohort
    # each contrast pooled over cell types: 920 correlated tests, so a loose band
    assert type1["rate"].between(0.025, 0.085).all(), type1
    overall = type1["rejections"].sum() / type1["tests"].sum()
    assert 0.035 <= overall <= 0.07
    power = result.power.set_index(["n_patients", "contrast"])["power"]
    assert power[44, "response@month0"] >= 0.8
    assert power[10, "response@month0"] < power[44, "response@month0"]
    # no interaction was planted: its rejection rate stays small
    assert power[44, "response:time6"] <= 0.2


def test_results_do_not_depend_on_task_batching(client: Client) -> None:
    a = PowerConfig(n_cohorts=10, power_cohorts=12, patients=[12], cohorts_per_task=5)
    b = a.model_copy(update={"cohorts_per_task": 3})
    ra, rb = run_power(SIM, a, client=client), run_power(SIM, b, client=client)
    pd.testing.assert_frame_equal(ra.type1, rb.type1)
    pd.testing.assert_frame_equal(ra.power, rb.power)


def test_wilson_interval() -> None:
    low, high = wilson_interval([5], [100])
    assert 0.02 < low[0] < 0.05 < high[0] < 0.12
