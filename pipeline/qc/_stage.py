"""The qc stage: one task per sample reads its counts once and computes everything.

Per sample, in one read: the QC metrics of every cell, the sample's adaptive thresholds
(they depend on that sample alone), scrublet on the cells that pass them, and the per-gene
sum and sum of squares of the raw counts over the finally kept cells (the first pass of
seurat_v3's highly variable genes, so that preprocess need not read the cohort for it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client

from ..cohort import read_sample_counts
from ..config import QCConfig
from ..moments import clipped_moments
from ._doublets import scrublet_scores
from ._kernels import METRICS, gene_sets, qc_metrics
from ._thresholds import qc_flags, qc_summary, reasons

MIN_CELLS_FOR_DOUBLETS = 50  # fewer kept cells: too few to simulate doublets from


@dataclass(frozen=True)
class SampleQC:
    metrics: pd.DataFrame  # one row per cell of the sample, METRICS columns + log1p ones
    flags: pd.DataFrame  # one bool column per reason, "doublet" last
    doublet_score: np.ndarray
    doublet_threshold: float
    moments: np.ndarray  # (3, n_genes): kept cells at [0, 0], per-gene sum, sum of squares


@dataclass(frozen=True)
class QCResult:
    obs: pd.DataFrame  # every cell: metrics, flags, reason, doublet score and call, qc_pass
    summary: pd.DataFrame  # one row per sample
    moments: dict[str, np.ndarray]  # sample id -> (3, n_genes) raw-count moments of kept cells
    seconds: float


def gene_moments(x: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """(3, n_genes): number of selected rows at [0, 0], per-gene sum and sum of squares."""
    moments = clipped_moments(x, np.zeros(x.shape[0], dtype=np.int64), rows)
    return moments.get(0, np.zeros((3, x.shape[1])))


def qc_sample(
    counts: sp.csr_matrix, *, gene_set: np.ndarray, params: QCConfig, seed: int
) -> SampleQC:
    """Metrics, flags, doublets and kept-cell gene moments of one sample (pure); the
    rules are ``params``' (``seed`` is the sample's own)."""
    values = qc_metrics(counts, gene_set)
    metrics = pd.DataFrame(values, columns=list(METRICS))
    metrics["total_counts"] = metrics["total_counts"].round().astype(np.int64)
    metrics["n_genes_by_counts"] = metrics["n_genes_by_counts"].astype(np.int64)
    metrics["log1p_total_counts"] = np.log1p(metrics["total_counts"])
    metrics["log1p_n_genes_by_counts"] = np.log1p(metrics["n_genes_by_counts"])
    flags = qc_flags(metrics, pd.Series(np.zeros(len(metrics), dtype=np.int8)), params)
    passing = ~flags.any(axis=1).to_numpy()
    score = np.full(len(metrics), np.nan)
    called = np.zeros(len(metrics), dtype=bool)
    threshold = float("nan")
    if params.doublets and passing.sum() >= MIN_CELLS_FOR_DOUBLETS:
        found = scrublet_scores(
            counts,
            np.flatnonzero(passing),
            expected_rate=params.expected_doublet_rate,
            mean_center=params.doublet_mean_center,
            sim_scored_fraction=params.doublet_sim_scored_fraction,
            seed=seed,
        )
        score[passing] = found.score
        called[passing] = found.called
        threshold = found.threshold
    flags["doublet"] = called
    keep = passing & ~called
    return SampleQC(
        metrics=metrics,
        flags=flags,
        doublet_score=score,
        doublet_threshold=threshold,
        moments=gene_moments(counts, keep),
    )


def _qc_sample_task(
    store: Path, genes: pd.Index | None, gene_set: np.ndarray, params: QCConfig, seed: int
) -> SampleQC:
    return qc_sample(read_sample_counts(store, genes), gene_set=gene_set, params=params, seed=seed)


def compute_qc(
    obs: pd.DataFrame,
    var: pd.DataFrame,
    *,
    client: Client,
    stores: dict[str, Path],
    params: QCConfig,
    seed_offset: int = 0,
    uniform_genes: bool = False,
) -> QCResult:
    """QC metrics of every cell, outlier flags per sample, and scrublet doublet calls,
    under the qc section's rules ``params``.

    ``obs`` and ``var`` are the cohort's (cells grouped by ``sample_id``; genes with a
    ``gene_symbols`` column); ``stores`` maps sample id to its store. One task per sample,
    sample ``i`` (in order of first appearance) seeded with ``params.seed + seed_offset +
    i`` (add-batch continues after the cohort's samples). ``uniform_genes``:
    every store holds exactly ``var``'s genes in order (as `open_cohort` records in
    ``uns``), so the tasks need not read and align each store's genes. ``qc_pass`` is
    False for flagged cells and for predicted doublets.
    """
    start = time.perf_counter()
    gene_set = gene_sets(var["gene_symbols"].to_numpy())
    sample = obs["sample_id"].astype("category")  # codes: no per-cell strings
    codes = sample.cat.codes.to_numpy()
    names = sample.cat.categories.astype(str)
    firsts = np.unique(codes, return_index=True)[1]  # each sample's first cell
    order = [str(names[codes[i]]) for i in np.sort(firsts)]  # in order of first appearance
    by_code = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_code], np.arange(len(names) + 1))
    positions = {str(names[c]): by_code[bounds[c] : bounds[c + 1]] for c in range(len(names))}
    genes = None if uniform_genes else client.scatter(pd.Index(var.index), broadcast=True)
    futures = [
        client.submit(
            _qc_sample_task,
            stores[sid],
            genes,
            gene_set,
            params,
            params.seed + seed_offset + i,
            pure=False,
        )
        for i, sid in enumerate(order)
    ]
    parts = client.gather(futures)
    index = np.concatenate([positions[sid] for sid in order])
    for sid, part in zip(order, parts, strict=True):
        if len(part.metrics) != len(positions[sid]):
            msg = f"sample {sid}: {len(part.metrics)} cells in its store, {len(positions[sid])} in obs"
            raise ValueError(msg)
    out = pd.concat([p.metrics for p in parts], ignore_index=True)
    flags = pd.concat([p.flags for p in parts], ignore_index=True)
    for col in flags.columns:
        out[f"qc_flag_{col}"] = flags[col].to_numpy()
    out["doublet_score"] = np.concatenate([p.doublet_score for p in parts])
    out["predicted_doublet"] = flags["doublet"].to_numpy()
    out["qc_reason"] = reasons(flags).array
    out["qc_pass"] = ~flags.any(axis=1).to_numpy()
    inverse = np.empty_like(index)
    inverse[index] = np.arange(index.size)  # obs row i is row inverse[i] of out
    out = out.iloc[inverse].set_axis(obs.index)
    ids = pd.Categorical.from_codes(codes, categories=names)
    summary = qc_summary(out.assign(sample_id=ids.set_categories(sorted(names))))
    summary["sample_id"] = summary["sample_id"].astype(str).astype(object)
    thresholds = {sid: p.doublet_threshold for sid, p in zip(order, parts, strict=True)}
    summary["doublet_threshold"] = summary["sample_id"].map(thresholds)
    moments = {sid: p.moments for sid, p in zip(order, parts, strict=True)}
    return QCResult(obs=out, summary=summary, moments=moments, seconds=time.perf_counter() - start)
