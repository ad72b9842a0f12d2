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
import pandas as pd
from sklearn.metrics import silhouette_samples


def _lisi(x: np.ndarray, labels: np.ndarray, perplexity: float) -> np.ndarray:
    from harmonypy import compute_lisi

    perplexity = min(perplexity, (x.shape[0] - 1) / 3)
    return compute_lisi(x, pd.DataFrame({"label": labels}), ["label"], perplexity)[:, 0]


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
    max_cells: int = 20_000,
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
