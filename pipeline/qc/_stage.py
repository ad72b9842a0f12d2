"""The qc stage: per-cell metrics over the lazy cohort, per-sample thresholds, doublets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
from distributed import Client

from ._kernels import METRICS, gene_sets, qc_metrics
from ._thresholds import QCRules, qc_flags, qc_summary, reasons


@dataclass(frozen=True)
class QCResult:
    obs: pd.DataFrame  # every cell: metrics, flags, reason, doublet score and call, qc_pass
    summary: pd.DataFrame  # one row per sample
    seconds: float


def _metrics(x: da.Array, gene_set: np.ndarray, client: Client) -> np.ndarray:
    out = da.map_blocks(
        qc_metrics, x, gene_set, dtype=np.float64, chunks=(x.chunks[0], (len(METRICS),))
    )
    return np.asarray(client.compute(out, sync=True))


def score_doublets(
    store: Path, keep: np.ndarray, *, expected_rate: float, seed: int, mean_center: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Scrublet on one sample's kept cells; NaN / False for the others (a pure task)."""
    import scanpy as sc

    sample = ad.read_zarr(store)
    scores = np.full(sample.n_obs, np.nan)
    called = np.zeros(sample.n_obs, dtype=bool)
    if keep.sum() < 50:  # too few cells to simulate doublets from
        return scores, called
    sub = ad.AnnData(X=sample.X[keep].astype(np.float32))
    sc.pp.scrublet(
        sub,
        expected_doublet_rate=expected_rate,
        random_state=seed,
        use_approx_neighbors=False,  # pynndescent recompiles per call: ~30 s per sample
        mean_center=mean_center,
    )
    scores[keep] = sub.obs["doublet_score"].to_numpy()
    called[keep] = sub.obs["predicted_doublet"].to_numpy().astype(bool)
    return scores, called


def compute_qc(
    cohort: ad.AnnData,
    *,
    client: Client,
    stores: dict[str, Path],
    rules: QCRules,
    doublets: bool = True,
    expected_doublet_rate: float = 0.06,
    doublet_mean_center: bool = False,
    seed: int = 0,
) -> QCResult:
    """QC metrics of every cell, outlier flags per sample, and scrublet doublet calls.

    ``cohort`` is the lazy cohort view; ``stores`` maps sample id to its store (read by
    the doublet tasks). ``qc_pass`` is False for flagged cells and, when ``doublets``,
    for predicted doublets.
    """
    start = time.perf_counter()
    gene_set = gene_sets(cohort.var["gene_symbols"].to_numpy())
    values = _metrics(cohort.X, gene_set, client)
    metrics = pd.DataFrame(values, index=cohort.obs_names, columns=list(METRICS))
    metrics["total_counts"] = metrics["total_counts"].round().astype(np.int64)
    metrics["n_genes_by_counts"] = metrics["n_genes_by_counts"].astype(np.int64)
    metrics["log1p_total_counts"] = np.log1p(metrics["total_counts"])
    metrics["log1p_n_genes_by_counts"] = np.log1p(metrics["n_genes_by_counts"])
    sample = cohort.obs["sample_id"].astype(str)
    flags = qc_flags(metrics, sample, rules)

    score = np.full(cohort.n_obs, np.nan)
    called = np.zeros(cohort.n_obs, dtype=bool)
    if doublets:
        passing = ~flags.any(axis=1).to_numpy()
        positions = pd.Series(np.arange(cohort.n_obs)).groupby(sample.to_numpy()).indices
        order = list(dict.fromkeys(sample))
        futures = {
            sid: client.submit(
                score_doublets,
                stores[sid],
                passing[positions[sid]],
                expected_rate=expected_doublet_rate,
                seed=seed + i,
                mean_center=doublet_mean_center,
                pure=False,
            )
            for i, sid in enumerate(order)
        }
        for sid, future in futures.items():
            s, c = future.result()
            score[positions[sid]] = s
            called[positions[sid]] = c
    flags["doublet"] = called

    obs = metrics.copy()
    for col in flags.columns:
        obs[f"qc_flag_{col}"] = flags[col].to_numpy()
    obs["doublet_score"] = score
    obs["predicted_doublet"] = called
    obs["qc_reason"] = reasons(flags).to_numpy()
    obs["qc_pass"] = ~flags.any(axis=1).to_numpy()
    summary = qc_summary(obs.assign(sample_id=sample.to_numpy()))
    return QCResult(obs=obs, summary=summary, seconds=time.perf_counter() - start)
