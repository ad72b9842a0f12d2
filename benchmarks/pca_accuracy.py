"""The preprocess stage's PCA against an exact in-memory PCA of the same normalized data.

In a workdir that has run the preprocess stage (its HVGs and QC-passed cells): PC scores
of the kept cells from `preprocess_cohort` with the axes fitted on every kept cell (exact
X'X) and on stratified subsamples (``preprocess.pca_max_cells``), against scanpy's
``sc.pp.pca`` (ARPACK, implicitly centred) of the log-normalized HVGs held in memory.
The workdir's own preprocess settings (uns ``pca``). Per PC, |Pearson r| of the scores over the kept cells (the sign of a PC is arbitrary);
one JSON line to ``--json`` with the minimum over the first 20 PCs, and the wall time of
the X'X + projection passes for each setting.

    python benchmarks/pca_accuracy.py WORKDIR --max-cells 100000,250000 \
        --json benchmarks/results/pca_accuracy.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import zarr

from pipeline.cohort import open_counts, read_sample_counts
from pipeline.config import PreprocessConfig
from pipeline.preprocess import preprocess_cohort
from pipeline.workdir import Workdir


def abs_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(axis=0)) / a.std(axis=0)
    b = (b - b.mean(axis=0)) / b.std(axis=0)
    return np.abs((a * b).mean(axis=0))


def in_memory(work: Path, keep: np.ndarray, totals: np.ndarray, hvg: np.ndarray, target: float):
    """The kept cells' log-normalized HVGs (CSR, float32), read sample by sample."""
    parts, start = [], 0
    for store in sorted_stores(work):
        x = read_sample_counts(store, None)
        n = x.shape[0]
        k = keep[start : start + n]
        sub = sp.csr_matrix(x[k][:, hvg], dtype=np.float32)
        sub = sp.csr_matrix(
            sp.diags((target / totals[start : start + n][k]).astype(np.float32)) @ sub
        )
        np.log1p(sub.data, out=sub.data)
        parts.append(sub)
        start += n
    return sp.vstack(parts, format="csr")


def sorted_stores(work: Path) -> list[Path]:
    cohort = open_counts(work)
    order = list(dict.fromkeys(cohort.obs["sample_id"].astype(str)))
    return [Workdir(work).sample_store(s) for s in order]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--max-cells", default="250000", help="comma-separated pca_max_cells")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    import scanpy as sc
    from distributed import Client, LocalCluster

    work = args.workdir
    group = zarr.open_group(str(work / "cohort.zarr"), mode="r")
    obs = ad.io.read_elem(group["obs"])
    var = ad.io.read_elem(group["var"])
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    totals = obs["total_counts"].to_numpy(dtype=np.float64)
    hvg = np.flatnonzero(var["highly_variable"].to_numpy())
    # the workdir's own preprocess settings (HVGs, components, target sum, batch key)
    stored = ad.io.read_elem(group["uns/pca"])["params"]
    base = PreprocessConfig.model_validate(
        {k: v for k, v in stored.items() if k in PreprocessConfig.model_fields}
    )
    record: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "workdir": str(work),
                    "cells": int(keep.size), "kept": int(keep.sum()), "hvgs": int(hvg.size)}  # fmt: skip
    scores: dict[str, np.ndarray] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        counts = open_counts(work)
        counts.obs[base.hvg_batch_key] = obs[base.hvg_batch_key].astype(str).to_numpy()
        for setting in [None, *(int(m) for m in args.max_cells.split(","))]:
            params = base.model_copy(update={"pca_max_cells": setting})
            t = time.perf_counter()
            result = preprocess_cohort(counts, client=client, keep=keep, total_counts=totals,
                                       params=params)  # fmt: skip
            pcs = result.pca.compute()[keep]
            name = "exact" if setting is None else str(setting)
            record[f"seconds_{name}"] = round(time.perf_counter() - t, 1)
            record[f"pca_seconds_{name}"] = round(result.seconds["pca"], 1)
            assert np.array_equal(np.flatnonzero(result.var["highly_variable"].to_numpy()), hvg)
            scores[name] = pcs
            print(name, record[f"seconds_{name}"], flush=True)
    t = time.perf_counter()
    x = in_memory(work, keep, totals, hvg, base.target_sum)
    adata = ad.AnnData(X=x)
    sc.pp.pca(adata, n_comps=base.n_comps, svd_solver="arpack", random_state=0)
    reference = adata.obsm["X_pca"]
    record["scanpy_seconds"] = round(time.perf_counter() - t, 1)
    del adata, x
    for name, pcs in scores.items():
        r = abs_r(pcs[:, :20].astype(np.float64), reference[:, :20].astype(np.float64))
        record[f"abs_r_first20_{name}"] = [round(float(v), 5) for v in r]
        record[f"min_abs_r_first20_{name}"] = round(float(r.min()), 5)
        if name != "exact":
            own = abs_r(pcs[:, :20].astype(np.float64), scores["exact"][:, :20].astype(np.float64))
            record[f"min_abs_r_first20_{name}_vs_exact"] = round(float(own.min()), 5)
        print(name, "min |r| first 20 vs scanpy", record[f"min_abs_r_first20_{name}"], flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with args.json.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
