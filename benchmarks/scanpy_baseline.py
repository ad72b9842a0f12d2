"""Baseline: scanpy in memory, the standard tutorial pipeline, on the same cells.

Source: an ingested workdir's sample stores (``WORKDIR``) or, with ``--samplesheet``, the
samplesheet's 10x HDF5 inputs read by ``sc.read_10x_h5`` (what a scanpy user starts from).
Steps, with the parameters of `immunoprofile run`'s default config: scanpy QC metrics,
the same per-sample MAD rules, scrublet per sample (exact neighbours,
mean_center=False), seurat_v3 HVGs (2,000, batch_key='batch'), normalize_total(1e4),
log1p, PCA (50 components) on the HVGs; with ``--full`` also Harmony on the PCs (key
'batch'), neighbors (15, on the Harmony embedding), Leiden (igraph, resolution 1) and
UMAP on every cell. Prints one JSON line: cells after QC and seconds per step.

    python benchmarks/scanpy_baseline.py WORKDIR [--no-doublets]
    python benchmarks/scanpy_baseline.py --samplesheet SAMPLESHEET --full
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import harmonypy
import numpy as np
import scanpy as sc

from pipeline.config import QCConfig
from pipeline.ingest import read_samplesheet
from pipeline.qc import gene_sets, qc_flags
from pipeline.workdir import Workdir


def read_stores(workdir: Path) -> ad.AnnData:
    files = Workdir(workdir)
    parts = [ad.read_zarr(files.sample_store(s)) for s in files.ingest_record().samples]
    adata = ad.concat(parts, merge="same")
    adata.X = adata.X.astype(np.float32)
    return adata


def read_inputs(samplesheet: Path) -> ad.AnnData:
    parts = {}
    for row in read_samplesheet(samplesheet):
        part = sc.read_10x_h5(row.path)
        part.var_names_make_unique()
        for key, value in row.metadata.items():
            part.obs[key] = value
        parts[row.sample_id] = part
    adata = ad.concat(parts, merge="same", index_unique="-")
    adata.var["gene_symbols"] = adata.var_names.to_numpy()
    return adata


def run(
    read: Callable[[], ad.AnnData], *, doublets: bool, full: bool, seconds: dict[str, float]
) -> tuple[int, int]:
    """Read, then every step, timing each; the only reference to the data is local, so a
    filtered copy replaces the whole as a script would."""

    def lap(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = round(now - lap.t, 2)  # type: ignore[attr-defined]
        lap.t = now  # type: ignore[attr-defined]
        print(json.dumps({"step": step, "seconds": seconds[step]}), file=sys.stderr, flush=True)

    lap.t = time.perf_counter()  # type: ignore[attr-defined]
    adata = read()
    n_cells = int(adata.n_obs)
    lap("read")
    codes = gene_sets(adata.var["gene_symbols"].to_numpy())
    adata.var["mt"], adata.var["ribo"], adata.var["hb"] = codes == 1, codes == 2, codes == 3
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt", "ribo", "hb"], percent_top=[20], inplace=True)
    flags = qc_flags(adata.obs, adata.obs["sample_id"].astype(str), QCConfig())
    adata = adata[~flags.any(axis=1).to_numpy()].copy()
    if doublets:
        sc.pp.scrublet(
            adata,
            batch_key="sample_id",
            expected_doublet_rate=0.06,
            use_approx_neighbors=False,
            mean_center=False,
            random_state=0,
        )
        adata = adata[~adata.obs["predicted_doublet"].to_numpy()].copy()
    lap("qc")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=2000, batch_key="batch", layer="counts"
    )
    lap("hvg")
    del adata.layers["counts"]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50, mask_var="highly_variable")
    lap("normalize_pca")
    if full:
        # sc.external.pp.harmony_integrate, whose `.T` is wrong for harmonypy >= 0.2
        # (Z_corr is already cells x PCs): the same call, without the transpose
        ho = harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs, "batch", verbose=False)
        z = np.asarray(ho.Z_corr)
        adata.obsm["X_pca_harmony"] = z if z.shape[0] == adata.n_obs else z.T
        lap("harmony")
        sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca_harmony", random_state=0)
        lap("neighbors")
        sc.tl.leiden(adata, resolution=1.0, flavor="igraph", n_iterations=2, random_state=0)
        lap("leiden")
        sc.tl.umap(adata, random_state=0)
        lap("umap")
    return n_cells, int(adata.n_obs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path, nargs="?", help="an ingested workdir")
    parser.add_argument("--samplesheet", type=Path, help="read the 10x inputs instead")
    parser.add_argument("--no-doublets", action="store_true")
    parser.add_argument("--full", action="store_true", help="also Harmony, kNN, Leiden, UMAP")
    args = parser.parse_args()
    if (args.workdir is None) == (args.samplesheet is None):
        parser.error("give either WORKDIR or --samplesheet")
    warnings.simplefilter("ignore")
    seconds: dict[str, float] = {}
    source = args.workdir or args.samplesheet
    read = read_stores if args.workdir else read_inputs
    cells, kept = run(
        lambda: read(source), doublets=not args.no_doublets, full=args.full, seconds=seconds
    )
    print(json.dumps({"cells": cells, "cells_after_qc": kept, "seconds": seconds}))


if __name__ == "__main__":
    main()
