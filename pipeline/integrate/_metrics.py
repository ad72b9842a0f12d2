"""Batch mixing and biology conservation of an embedding, as scib-metrics defines them.

- iLISI: the median LISI of batch labels (Korsunsky et al. 2019; harmonypy's C++ code,
  perplexity 30), scaled as in scib to (median - 1) / (n_batches - 1): 0 = no mixing,
  1 = every neighbourhood holds all batches in their proportions.
- cLISI: the same for cell-type labels, scaled as (n_types - median) / (n_types - 1):
  1 = neighbourhoods hold one type.
- batch silhouette (scib's "ASW batch"): per cell type, 1 - |silhouette by batch|,
  averaged; without labels over all cells: 1 = batches indistinguishable.
- label silhouette (scib's "ASW label"): (silhouette by cell type + 1) / 2.
All on a seeded random subsample (exact neighbours and silhouettes are quadratic).
"""

from __future__ import annotations

import numpy as np
from sklearn import config_context
from sklearn.metrics import silhouette_samples as _sklearn_silhouette_samples

# scikit-learn computes silhouettes from row blocks of the distance matrix of at most its
# `working_memory` (1 GiB by default): at 10,000 cells the whole 0.75 GiB matrix at once,
# which was the integrate stage's peak. Smaller blocks, the same values.
SILHOUETTE_WORKING_MIB = 64


def silhouette_samples(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    with config_context(working_memory=SILHOUETTE_WORKING_MIB):
        return _sklearn_silhouette_samples(x, labels)


def _simpson(
    distances: np.ndarray, codes: np.ndarray, n_labels: int, perplexity: float
) -> np.ndarray:
    """Per row: the Simpson index of the neighbours' label codes under Gaussian weights whose
    bandwidth gives the row's ``perplexity``; harmonypy's (and the R lisi package's)
    binary search (tolerance 1e-5, 50 halvings), run for all rows at once."""
    n = distances.shape[0]
    log_u = np.log(perplexity)
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)

    def entropy(b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.exp(-d * b[:, None])
        total = p.sum(axis=1)
        ok = total > 0
        h = np.zeros(len(b))
        h[ok] = np.log(total[ok]) + b[ok] * (d[ok] * p[ok]).sum(axis=1) / total[ok]
        p[ok] /= total[ok, None]
        p[~ok] = 0
        return h, p

    h, p = entropy(beta, distances)
    active = np.abs(h - log_u) >= 1e-5
    for _ in range(50):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        up = h[rows] - log_u > 0  # too flat: sharpen
        b = beta[rows]
        lo[rows[up]] = b[up]
        hi[rows[~up]] = b[~up]
        b = np.where(
            up,
            np.where(np.isfinite(hi[rows]), (b + hi[rows]) / 2, b * 2),
            np.where(np.isfinite(lo[rows]), (b + lo[rows]) / 2, b / 2),
        )
        beta[rows] = b
        h[rows], p[rows] = entropy(b, distances[rows])
        active[rows] = np.abs(h[rows] - log_u) >= 1e-5
    flat = (np.arange(n)[:, None] * n_labels + codes).ravel()
    per_label = np.bincount(flat, weights=p.ravel(), minlength=n * n_labels).reshape(n, -1)
    simpson = (per_label**2).sum(axis=1)
    simpson[h == 0] = -1  # as harmonypy: no neighbour carries weight
    return simpson


def _lisi(x: np.ndarray, labels: np.ndarray, perplexity: float) -> np.ndarray:
    """LISI per cell as harmonypy's `compute_lisi` (3 x perplexity nearest neighbours,
    self excluded, Euclidean distances), with the exact neighbours from faiss's BLAS
    search: harmonypy's own search took 36 s for 20,000 cells x 50 dims on one core."""
    from ..runtime import faiss_all_cores

    faiss = faiss_all_cores()

    perplexity = min(perplexity, (x.shape[0] - 1) / 3)
    k = int(perplexity * 3)
    data = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    squared, neighbours = index.search(data, k + 1)
    distances = np.sqrt(np.maximum(squared[:, 1:], 0)).astype(np.float64)
    names, codes = np.unique(np.asarray(labels), return_inverse=True)
    return 1 / _simpson(distances, codes.ravel()[neighbours[:, 1:]], len(names), perplexity)


def _batch_silhouette(x: np.ndarray, batch: np.ndarray, labels: np.ndarray | None) -> float:
    groups = (
        [np.ones(len(batch), dtype=bool)]
        if labels is None
        else [labels == t for t in np.unique(labels)]
    )
    scores = []
    for cells in groups:
        if np.unique(batch[cells]).size < 2 or cells.sum() < 3:
            continue
        scores.append(np.mean(1 - np.abs(silhouette_samples(x[cells], batch[cells]))))
    return float(np.mean(scores)) if scores else float("nan")


def integration_metrics(
    embedding: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    max_cells: int = 10_000,
    perplexity: float = 30.0,
    seed: int = 0,
) -> dict[str, float]:
    """iLISI and batch silhouette; with ``labels`` also cLISI and label silhouette."""
    batch = np.asarray(batch).astype(str)
    n = embedding.shape[0]
    rows = np.arange(n)
    if n > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
    x = np.ascontiguousarray(embedding[rows], dtype=np.float64)
    b = batch[rows]
    n_batches = np.unique(b).size
    out = {
        "n_cells": float(len(rows)),
        "ilisi": float((np.median(_lisi(x, b, perplexity)) - 1) / max(n_batches - 1, 1)),
    }
    lab = None if labels is None else np.asarray(labels).astype(str)[rows]
    out["batch_silhouette"] = _batch_silhouette(x, b, lab)
    if lab is not None:
        n_types = np.unique(lab).size
        out["clisi"] = float((n_types - np.median(_lisi(x, lab, perplexity))) / max(n_types - 1, 1))
        out["label_silhouette"] = float((silhouette_samples(x, lab).mean() + 1) / 2)
    return out
