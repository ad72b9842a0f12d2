"""A simulated cohort taken through annotate at default settings, and its truth."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from distributed import Client

from pipeline.config import RunConfig, parse_config
from pipeline.simulate import read_truth_cells

from ..conftest import once_per_run

# default simulation settings but for the cohort's size: 6 patients x 3 timepoints x
# ~1,000 cells gives ~1,500 B cells (DN1 and plasmablasts: ~60 cells each)
ACCURACY_COHORT = {"seed": 21, "n_patients": 6, "cells_per_sample": 1000, "n_genes": 6000}


def run_through_annotate(out: Path, client: Client, simulate: dict, **cfg: object) -> RunConfig:
    from pipeline.ingest import ingest_samples, read_samplesheet
    from pipeline.simulate import simulate_cohort
    from pipeline.stages import run_stage

    run = parse_config({"simulate": simulate})
    sim = simulate_cohort(run.simulate, out=out / "data", client=client)
    run = parse_config({"workdir": str(out / "work"), "samplesheet": str(sim.samplesheet), **cfg})
    ingest_samples(read_samplesheet(sim.samplesheet), workdir=run.workdir, client=client)
    for stage in ("qc", "preprocess", "integrate", "graph", "annotate"):
        run_stage(stage, run, client)
    return run


def read_truth(run: RunConfig, obs_names: pd.Index) -> pd.DataFrame:
    assert run.samplesheet is not None
    return read_truth_cells(run.samplesheet, obs_names)


@pytest.fixture(scope="session")
def accuracy_run(tmp_path_factory: pytest.TempPathFactory, client: Client) -> RunConfig:
    return once_per_run(
        tmp_path_factory, "accuracy", lambda out: run_through_annotate(out, client, ACCURACY_COHORT)
    )


@pytest.fixture(scope="session")
def accuracy_cohort(accuracy_run: RunConfig) -> ad.AnnData:
    return ad.read_zarr(Path(accuracy_run.workdir) / "cohort.zarr")
