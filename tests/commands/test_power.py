"""``immunoprofile power`` writes its tables, plot and summary (the simulations themselves
are tested in tests/abundance/test_power.py)."""

from __future__ import annotations

import json
from pathlib import Path

from distributed import Client

from pipeline.commands import run_power_command
from pipeline.config import PowerConfig, SimulationConfig

SIM = SimulationConfig(seed=1)  # the study's design: 44 patients x 3 timepoints


def test_command_writes_its_outputs(tmp_path: Path, client: Client) -> None:
    cfg = PowerConfig(n_cohorts=10, power_cohorts=10, patients=[8, 16])
    report = run_power_command(SIM, cfg, out=tmp_path / "power", client=client)
    files = {p.name for p in (tmp_path / "power").iterdir()}
    assert files == {"type1.csv", "type1_by_cell_type.csv", "power.csv", "power.png",
                     "summary.json"}  # fmt: skip
    summary = json.loads((tmp_path / "power" / "summary.json").read_text())
    assert set(summary["power_response_month0"]) == {"glmm/8", "glmm/16"}
    assert "type-I error at alpha 0.05" in report and "power of response@month0" in report
