"""The qc stage in a workdir: the lazy cohort in, cohort.zarr and qc/summary.csv out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
from distributed import Client

from ..cohort import lazy_cohort_obs
from ..config import QCConfig
from ..workdir import Workdir
from ._stage import QCResult, compute_qc, qc_columns

if TYPE_CHECKING:
    from ..stages import StageContext

MOMENT_SUM = "qc_counts_sum"  # varm: genes x samples, raw counts summed over kept cells
MOMENT_SUMSQ = "qc_counts_sumsq"  # the same for squared counts


def qc_cells(
    cells: ad.AnnData, *, workdir: Workdir, client: Client, params: QCConfig, seed_offset: int = 0
) -> QCResult:
    """The qc rules on the cells of a lazily opened view (`pipeline.cohort.open_cohort`,
    the cohort's or a new batch's samples)."""
    stores = {s: workdir.sample_store(s) for s in cells.obs["sample_id"].cat.categories}
    return compute_qc(
        cells.obs,
        cells.var,
        client=client,
        stores=stores,
        params=params,
        seed_offset=seed_offset,
        uniform_genes=bool(cells.uns["uniform_genes"]),
    )


def run_qc(ctx: StageContext) -> str:
    """Write cohort.zarr whole: every cell's metadata, QC metrics and flags (written by the
    workers, sample by sample, from the results they computed: the driver holds no
    per-cell value), the genes, and the kept cells' per-sample raw-count moments
    (preprocess's first pass)."""
    start = time.perf_counter()
    q = ctx.cfg.qc
    stores, var = ctx.sample_stores()
    samples = list(stores)
    names, meta = lazy_cohort_obs(ctx.workdir, samples=samples)
    result = qc_columns(
        samples,
        var,
        client=ctx.cluster,
        stores=stores,
        params=q,
        uniform_genes=ctx.workdir.ingest_record().uniform_genes,
    )
    seconds = time.perf_counter() - start  # the computations; the columns are written next
    # genes x samples, filled sample by sample (a 4M-cell cohort has 528 samples)
    sums = np.empty((len(var), len(samples)))
    sumsq = np.empty((len(var), len(samples)))
    for i, s in enumerate(samples):
        moment = result.moments.pop(s)
        sums[:, i], sumsq[:, i] = moment[1], moment[2]
    uns = {
        "qc": {
            "params": q.model_dump(mode="json"),
            "seconds": seconds,
            "moment_samples": samples,
        },
        "qc_summary": result.summary,
    }
    varm = {MOMENT_SUM: sums, MOMENT_SUMSQ: sumsq}
    ctx.write_cohort_lazy(names=names, obs={**meta, **result.columns}, var=var, varm=varm, uns=uns)
    summary = result.summary
    del result  # the workers release the per-sample results
    ctx.workdir.qc_summary.parent.mkdir(exist_ok=True)
    summary.to_csv(ctx.workdir.qc_summary, index=False)
    kept, total = int(summary["n_kept"].sum()), int(summary["n_cells"].sum())
    seconds = time.perf_counter() - start
    return f"qc: {kept:,} of {total:,} cells pass ({kept / total:.1%}) in {seconds:.1f} s"
