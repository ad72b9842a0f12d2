"""`make demo` end to end (slow): simulate the demo cohort, run every built stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_built_stage(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "pipeline"]
    sim = subprocess.run([*run, "simulate", str(ROOT / "configs" / "demo.yaml"), "--out", "demo_data"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    proc = subprocess.run([*run, "run", str(ROOT / "configs" / "demo.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo_work" / "abundance" / "tests.csv").exists()
    assert (tmp_path / "demo_work" / "report" / "index.html").exists()
    cohort = ad.read_zarr(tmp_path / "demo_work" / "cohort.zarr")
    assert cohort.n_obs > 10_000 and "X_pca" in cohort.obsm
    check = subprocess.run(
        [*run, "validate", "demo_work"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
