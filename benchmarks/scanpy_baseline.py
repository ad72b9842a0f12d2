"""Baseline: scanpy in memory, QC through PCA, on an ingested workdir's sample stores.

The same steps and parameters as `immunoprofile run --until preprocess` with the default
config: scanpy QC metrics, the same per-sample MAD rules, scrublet per sample (exact
neighbours, mean_center=False), seurat_v3 HVGs (2,000, batch_key='batch'), normalize_total(1e4), log1p,
PCA (50 components) on the HVGs. Reads the stores into one in-memory AnnData first.

    python benchmarks/scanpy_baseline.py WORKDIR [--no-doublets]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

from pipeline.qc import QCRules, gene_sets, qc_flags


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--no-doublets", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    record = json.loads((args.workdir / "ingest.json").read_text())
    parts = [ad.read_zarr(args.workdir / "samples" / f"{s}.zarr") for s in record["samples"]]
    adata = ad.concat(parts, merge="same")
    del parts
    adata.X = adata.X.astype(np.float32)
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    codes = gene_sets(adata.var["gene_symbols"].to_numpy())
    adata.var["mt"], adata.var["ribo"], adata.var["hb"] = codes == 1, codes == 2, codes == 3
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt", "ribo", "hb"], percent_top=[20], inplace=True)
    flags = qc_flags(adata.obs, adata.obs["sample_id"].astype(str), QCRules())
    adata = adata[~flags.any(axis=1).to_numpy()].copy()
    if not args.no_doublets:
        sc.pp.scrublet(
            adata,
            batch_key="sample_id",
            expected_doublet_rate=0.06,
            use_approx_neighbors=False,
            mean_center=False,
            random_state=0,
        )
        adata = adata[~adata.obs["predicted_doublet"].to_numpy()].copy()
    seconds["qc"] = time.perf_counter() - t

    t = time.perf_counter()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=2000, batch_key="batch", layer="counts"
    )
    seconds["hvg"] = time.perf_counter() - t
    t = time.perf_counter()
    del adata.layers["counts"]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50, mask_var="highly_variable")
    seconds["normalize_pca"] = time.perf_counter() - t
    print(json.dumps({"cells_after_qc": int(adata.n_obs), "seconds": seconds}))


if __name__ == "__main__":
    main()
