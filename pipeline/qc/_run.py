"""The qc stage in a workdir: the lazy cohort in, cohort.zarr and qc/summary.csv out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from distributed import Client

from ..config import QCConfig
from ..workdir import Workdir
from ._stage import QCResult, compute_qc

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
    """Write cohort.zarr whole: every cell's metadata, QC metrics and flags, the genes, and
    the kept cells' per-sample raw-count moments (preprocess's first pass)."""
    cohort = ctx.open_cohort()
    q = ctx.cfg.qc
    result = qc_cells(cohort, workdir=ctx.workdir, client=ctx.cluster, params=q)
    obs = pd.concat([cohort.obs, result.obs], axis=1)  # the same cells in the same order
    out = ad.AnnData(obs=obs, var=cohort.var.copy())
    samples = list(result.moments)
    moments = np.stack([result.moments[s] for s in samples])  # samples x 3 x genes
    out.varm[MOMENT_SUM] = moments[:, 1].T
    out.varm[MOMENT_SUMSQ] = moments[:, 2].T
    out.uns["qc"] = {
        "params": q.model_dump(mode="json"),
        "seconds": result.seconds,
        "moment_samples": samples,
    }
    out.uns["qc_summary"] = result.summary
    ctx.write_cohort(out)
    ctx.workdir.qc_summary.parent.mkdir(exist_ok=True)
    result.summary.to_csv(ctx.workdir.qc_summary, index=False)
    kept = int(obs["qc_pass"].sum())
    return (
        f"qc: {kept:,} of {len(obs):,} cells pass ({kept / len(obs):.1%}) in {result.seconds:.1f} s"
    )
