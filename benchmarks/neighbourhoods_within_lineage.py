"""Benchmark: the planted DN2 difference tested on neighbourhoods of one lineage's cells,
each sample's cells of that lineage as the denominator (issue #27's DN2 check).

The stage tests a neighbourhood's share of *all* of a sample's QC-passed cells (Milo's
offset); the simulator plants DN2's difference within B cells, and on the PBMC scale the
B cells' own between-patient variation dilutes it (the label-level GLMM says how much:
its DN2 within PBMC row). This cuts neighbourhoods from the lineage's cells only (the
stage's kernels: refined sampling on the graph stage's kNN graph restricted to them, the
k nearest in the integrated embedding), counts them per sample, fits the stage's GLMM
with the sample's cells of the lineage as totals (serially, in this process) and applies
the spatial FDR. Reported for ``response@month0``: the neighbourhoods mostly (>= 0.5) truly
DN2 (the simulator's truth), how many are called and their median estimate, and the
calls among neighbourhoods with < 10% DN2.

    python benchmarks/neighbourhoods_within_lineage.py WORKDIR TRUTH_DIR --k 660 \
        --json benchmarks/results/neighbourhoods_planted.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from pipeline.abundance import estimable_design
from pipeline.neighbourhoods import (
    estimable_contrasts,
    fit_neighbourhoods,
    make_neighbourhoods,
    sample_counts,
    spatial_fdr,
)

sys.path.insert(0, str(Path(__file__).parent))
from neighbourhoods_planted import truth_of_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--lineage", default="B", help="'all': every QC-passed cell (the stage)")
    parser.add_argument("--k", type=int, required=True, help="cells per neighbourhood")
    parser.add_argument("--prop", type=float, default=0.05)
    parser.add_argument("--contrast", default="response@month0")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    group = zarr.open_group(str(args.workdir / "cohort.zarr"), mode="r")
    obs = ad.io.read_elem(group["obs"])
    passed = obs["qc_pass"].to_numpy(dtype=bool)
    chosen = passed.copy()
    if args.lineage != "all":
        chosen &= obs["lineage"].astype(str).to_numpy() == args.lineage
    rows = np.flatnonzero(chosen)
    x = np.asarray(group["obsm/X_pca_harmony"][...], dtype=np.float32)[rows]
    graph = ad.io.read_elem(group["obsp/distances"]).tocsr()[rows][:, rows]
    cells = obs.iloc[rows]
    samples = (obs[passed][["sample_id", "patient_id", "timepoint_months", "response"]]
               .astype({"sample_id": str, "patient_id": str, "response": str})
               .drop_duplicates("sample_id").reset_index(drop=True))  # fmt: skip
    samples["n_cells"] = (samples["sample_id"]
                          .map(cells["sample_id"].astype(str).value_counts()).fillna(0))  # fmt: skip
    start = time.perf_counter()
    hoods = make_neighbourhoods(x, graph, args.k, prop=args.prop, seed=0)
    codes = pd.Categorical(cells["sample_id"].astype(str), categories=samples["sample_id"]).codes
    counts = sample_counts(hoods.members, np.asarray(codes, dtype=np.int64), len(samples))
    design, _ = estimable_design(samples)
    order = samples.set_index("sample_id").index.get_indexer(design.samples["sample_id"])
    counts, totals = counts[:, order], samples["n_cells"].to_numpy(dtype=float)[order]
    parts = [fit_neighbourhoods(counts[s : s + 250], totals, design)
             for s in range(0, len(counts), 250)]  # fmt: skip
    j = estimable_contrasts(design).index(args.contrast)
    pvalue = np.concatenate([p.pvalue[:, j] for p in parts])
    estimate = np.concatenate([p.estimate[:, j] for p in parts])
    fdr = spatial_fdr(pvalue, hoods.weights)
    seconds = time.perf_counter() - start

    truth = truth_of_cells(args.workdir, args.truth)
    dn2 = truth["b_subset"].to_numpy()[rows] == "DN2"
    share = dn2[hoods.members].mean(axis=1)
    mostly, other = share >= 0.5, share < 0.1
    record = {
        "benchmark": "neighbourhoods_within_lineage",
        "workdir": str(args.workdir),
        "lineage": args.lineage,
        "contrast": args.contrast,
        "alpha": args.alpha,
        "cells": int(rows.size),
        "k": args.k,
        "cells_per_sample": round(args.k / len(samples), 2),
        "n_nhoods": int(pvalue.size),
        "called": int(np.sum(fdr < args.alpha)),
        "DN2_nhoods": int(mostly.sum()),
        "DN2_called": int(np.sum(fdr[mostly] < args.alpha)),
        "DN2_median_estimate": float(np.nanmedian(estimate[mostly])),
        "DN2_min_pvalue": float(np.nanmin(pvalue[mostly])),
        "DN2_p_below_0.01": int(np.sum(pvalue[mostly] < 0.01)),
        "min_spatial_fdr": float(np.nanmin(fdr)),
        "other_nhoods": int(other.sum()),
        "other_called": int(np.sum(fdr[other] < args.alpha)),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(record, indent=2))
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
