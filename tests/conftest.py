"""Shared fixtures: a real LocalCluster and small simulated cohorts."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anndata as ad
import dask
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from cluster.launch import worker_environ
from pipeline.config import RunConfig, SimulationConfig, parse_config
from pipeline.simulate import SimulationResult, simulate_cohort

T = TypeVar("T")


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str,
                 build: Callable[[Path], T]) -> T:  # fmt: skip
    """`build(an empty directory)`, once per test run: under pytest-xdist every process
    has its own session fixtures, so the first process that needs `name` builds it in the
    run's shared temporary directory (under a file lock) and the others load its result,
    as xdist's documentation suggests. What is built is shared: tests must not change it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # one per run, above each process's own
    result = shared / f"{name}.pickle"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if result.exists():
            loaded: T = pickle.loads(result.read_bytes())
            return loaded
        built = build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))
        result.write_bytes(pickle.dumps(built))
        return built


SMALL = {
    "seed": 11,
    "n_patients": 6,
    "extra_patients": 2,
    "cells_per_sample": 400,
    "n_genes": 6000,
    "n_batches": 3,
}


@pytest.fixture(scope="session")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes on localhost, like a 2-core laptop, with the
    worker environment `immunoprofile run` gives its workers."""
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", memory_limit="4GiB",
        ) as cluster,
        Client(cluster) as c,
    ):  # fmt: skip
        yield c


def small_config(**overrides: object) -> SimulationConfig:
    return SimulationConfig.model_validate({**SMALL, **overrides})


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory, client: Client) -> SimulationResult:
    """A 6+2-patient cohort in 10x HDF5, simulated once per test run."""
    return once_per_run(
        tmp_path_factory, "cohort_h5",
        lambda out: simulate_cohort(small_config(format="h5"), out=out, client=client),
    )  # fmt: skip


@pytest.fixture(scope="session")
def ingested(
    tmp_path_factory: pytest.TempPathFactory, client: Client, small_cohort: SimulationResult
) -> Path:
    """The small cohort ingested into a workdir (shared; tests must not modify it)."""
    from pipeline.ingest import ingest_samples, read_samplesheet

    workdir = tmp_path_factory.mktemp("ingested")
    ingest_samples(read_samplesheet(small_cohort.samplesheet), workdir=workdir, client=client)
    return workdir


# without expression variation between patients (the cohort the batch-mixing bars and the
# fault tests were set on; with it, one X_pca value of 233,820 differed by 1 ulp between
# the killed-and-resumed run and the fixture's: see the session notes)
STRONG_BATCHES = {"seed": 5, "n_patients": 6, "extra_patients": 0, "n_batches": 3,
                  "batch_effect_sd": 0.5, "expression_patient_sd": 0.0,
                  "expression_effects": []}  # fmt: skip


@pytest.fixture(scope="session")
def strong_batch_run(tmp_path_factory: pytest.TempPathFactory, client: Client) -> RunConfig:
    from pipeline.ingest import ingest_samples, read_samplesheet
    from pipeline.simulate import simulate_cohort
    from pipeline.stages import run_stage

    def build(out: Path) -> RunConfig:
        sim = simulate_cohort(small_config(**STRONG_BATCHES), out=out / "data", client=client)
        cfg = parse_config(
            {
                "workdir": str(out / "work"),
                "samplesheet": str(sim.samplesheet),
                "preprocess": {"n_top_genes": 1000, "n_comps": 30},
            }
        )
        ingest_samples(read_samplesheet(sim.samplesheet), workdir=cfg.workdir, client=client)
        for stage in ("qc", "preprocess", "integrate", "graph"):
            run_stage(stage, cfg, client)
        return cfg

    return once_per_run(tmp_path_factory, "strong_batches", build)


@pytest.fixture(scope="session")
def strong_batch_cohort(strong_batch_run: RunConfig) -> ad.AnnData:
    return ad.read_zarr(Path(strong_batch_run.workdir) / "cohort.zarr")


@pytest.fixture(scope="session")
def strong_batch_truth(
    strong_batch_run: RunConfig, strong_batch_cohort: ad.AnnData
) -> pd.DataFrame:
    assert strong_batch_run.samplesheet is not None
    data = Path(strong_batch_run.samplesheet).parent
    sheet = pd.read_csv(strong_batch_run.samplesheet)
    frames = []
    for sid in sheet["sample_id"]:
        t = pd.read_csv(data / "truth" / "cells" / f"{sid}.csv.gz", keep_default_na=False)
        frames.append(t.set_index(sid + ":" + t["barcode"]))
    return pd.concat(frames).loc[strong_batch_cohort.obs_names]


# expression tests B cells and naive B cells only: each fit costs seconds (PyDESeq2)
ANALYSED_CONFIG = (
    "cluster: {n_workers: 2, threads_per_worker: 1}\npreprocess: {n_top_genes: 500, n_comps: 20}\n"
    "expression: {cell_types: [B, naive]}\n"
)


@dataclass(frozen=True)
class CommandRun:
    """A workdir made by `immunoprofile run` and what the command said."""

    workdir: Path
    config: Path
    args: list[str]  # run CONFIG --samplesheet ... --workdir ...
    ingest: tuple[int, str, str]  # exit code, stdout, stderr of `run --until ingest`
    run: tuple[int, str, str]  # the same for the whole `run` after it


def _main(args: list[str]) -> tuple[int, str, str]:
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def analysed_small(
    tmp_path_factory: pytest.TempPathFactory, small_cohort: SimulationResult
) -> CommandRun:
    """The small cohort through every built stage by the command line, as a user runs it
    (`--until ingest`, then everything); shared: tests copy the workdir before changing it."""

    def build(root: Path) -> CommandRun:
        config = root / "c.yaml"
        config.write_text(ANALYSED_CONFIG)
        workdir = root / "w"
        args = ["run", str(config), "--samplesheet", str(small_cohort.samplesheet),
                "--workdir", str(workdir)]  # fmt: skip
        ingest = _main([*args, "--until", "ingest"])
        assert not (workdir / "cohort.zarr").exists()
        return CommandRun(workdir, config, args, ingest, _main(args))

    return once_per_run(tmp_path_factory, "analysed_small", build)
