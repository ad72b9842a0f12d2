"""Benchmark: what pertpy's Milo needs, in memory and time, for a workdir's cohort
(issue #27: the in-memory tools' cost next to the stage's).

A user of pertpy holds the QC-passed cells' metadata and integrated embedding in one
process (``cohort.zarr``'s obs and ``obsm/X_pca_harmony``; no expression matrix, which
favours pertpy), builds the kNN graph with scanpy (`sc.pp.neighbors`, ``--k``
neighbours on the embedding), then Milo's `make_nhoods` (``--prop``), `count_nhoods`
and `da_nhoods` (edgeR, ``~ group`` with the response@month0 contrast, as
neighbourhoods_pertpy.py spells it). The process's peak resident memory (R runs inside
it, through rpy2) and each step's seconds are printed as one JSON line and appended to
``--json``.

Needs pertpy, not a project dependency; run it in the venv described in
neighbourhoods_pertpy.py (with pynndescent < 0.6: with 0.7, scanpy's neighbors fails above
4,096 cells, 'csr_array' object has no attribute 'getnnz'):

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        /work/pertpy-venv/bin/python benchmarks/neighbourhoods_pertpy_memory.py WORKDIR \
        --k 50 --json benchmarks/results/neighbourhoods_pertpy.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from neighbourhoods_pertpy import GROUP_DESIGN, RESPONSES, PeakRss, model_contrast, sample_cells


def load(workdir: Path) -> ad.AnnData:
    group = zarr.open_group(str(workdir / "cohort.zarr"), mode="r")
    obs = ad.io.read_elem(group["obs"])
    rows = np.flatnonzero(obs["qc_pass"].to_numpy(dtype=bool))
    cells = obs.iloc[rows][["sample_id", "patient_id", "response", "timepoint_months"]].copy()
    cells = cells.astype({"sample_id": str, "patient_id": str, "response": str})
    cells.index = cells.index.astype(str)
    cells["response"] = cells["response"].astype("category").cat.set_categories(RESPONSES)
    cells["group"] = sample_cells(cells).astype("category")
    adata = ad.AnnData(obs=cells)
    adata.obsm["X_pca_harmony"] = np.asarray(group["obsm/X_pca_harmony"][...])[rows]
    return adata


def main() -> None:
    import pertpy as pt
    import scanpy as sc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--k", type=int, default=50, help="neighbours of sc.pp.neighbors")
    parser.add_argument("--prop", type=float, default=0.05, help="make_nhoods' share of cells")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seconds = {}
    with PeakRss() as rss:
        start = time.perf_counter()
        adata = load(args.workdir)
        seconds["load"] = time.perf_counter() - start
        start = time.perf_counter()
        sc.pp.neighbors(adata, n_neighbors=args.k, use_rep="X_pca_harmony", random_state=0)
        seconds["neighbors"] = time.perf_counter() - start
        milo = pt.tl.Milo()
        start = time.perf_counter()
        milo.make_nhoods(adata, prop=args.prop)
        seconds["make_nhoods"] = time.perf_counter() - start
        start = time.perf_counter()
        mdata = milo.count_nhoods(adata, sample_col="sample_id")
        seconds["count_nhoods"] = time.perf_counter() - start
        start = time.perf_counter()
        milo.da_nhoods(
            mdata, design=GROUP_DESIGN, model_contrasts=model_contrast("response@month0"),
            solver="edger",
        )  # fmt: skip
        seconds["da_nhoods"] = time.perf_counter() - start
    sizes = np.asarray(adata.obsm["nhoods"].sum(axis=0)).ravel()
    record = {
        "benchmark": "neighbourhoods_pertpy_memory",
        "workdir": str(args.workdir),
        "n_cells": int(adata.n_obs),
        "n_samples": int(adata.obs["sample_id"].nunique()),
        "k": args.k,
        "prop": args.prop,
        "n_nhoods": int(sizes.size),
        "median_nhood_size": float(np.median(sizes)),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "peak_rss_gib": round(rss.peak / 2**30, 3),
        "versions": {
            "pertpy": version("pertpy"),
            "scanpy": version("scanpy"),
            "python": platform.python_version(),
        },
    }
    print(json.dumps(record))
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
