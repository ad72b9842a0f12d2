"""A killed ingestion, re-run, finishes with every sample once and nothing rewritten."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from distributed import Client

from pipeline.simulate import simulate_cohort
from tests.conftest import small_config


def _complete_stores(samples: Path) -> list[Path]:
    if not samples.exists():
        return []
    return sorted(p for p in samples.glob("*.zarr") if not p.name.startswith("."))


def test_sigkill_mid_ingestion_then_rerun(tmp_path: Path, client: Client) -> None:
    data = tmp_path / "data"
    simulate_cohort(
        small_config(n_patients=8, extra_patients=0, cells_per_sample=1500, format="h5"),
        out=data,
        client=client,
    )
    sheet = pd.read_csv(data / "samplesheet.csv")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'w'}\nsamplesheet: {data / 'samplesheet.csv'}\n"
        "cluster: {profile: local, n_workers: 2, threads_per_worker: 1}\n"
    )
    command = [sys.executable, "-m", "pipeline", "run", str(config), "--until", "ingest"]
    samples = tmp_path / "w" / "samples"

    proc = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while (
        len(_complete_stores(samples)) < 3 and time.monotonic() < deadline and proc.poll() is None
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _complete_stores(samples)
    assert 3 <= len(done_before) < len(sheet), "the kill should land mid-way"
    mtimes = {p.name: (p / "zarr.json").stat().st_mtime_ns for p in done_before}

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(sheet) - len(done_before)} written, {len(done_before)} unchanged" in rerun.stdout

    stores = _complete_stores(samples)
    assert sorted(p.name for p in stores) == sorted(f"{s}.zarr" for s in sheet["sample_id"])
    assert [p.name for p in samples.iterdir() if p.name.startswith(".")] == []  # no staging
    for p in done_before:
        assert (p / "zarr.json").stat().st_mtime_ns == mtimes[p.name]  # not rewritten
    for row in sheet.itertuples():
        with h5py.File(data / row.path) as f:
            expected = int(f["matrix/data"][:].sum(dtype=np.int64))
        x = ad.read_zarr(samples / f"{row.sample_id}.zarr").X
        assert int(x.sum(dtype=np.int64)) == expected
