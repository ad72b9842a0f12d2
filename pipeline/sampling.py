"""Subsamples stratified by group: what Harmony, scVI, Leiden, the UMAP and the marker
models are fitted on when a cohort is larger than their configured limit."""

from __future__ import annotations

import numpy as np
import pandas as pd


def stratified_sample(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted positions of about ``size`` items, each group drawn in proportion to its
    size (at least one per group); all positions when ``size`` >= the number of items."""
    n = groups.size
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        take = min(members.size, max(1, round(size * members.size / n)))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def sorted_codes(values: pd.Series | np.ndarray) -> np.ndarray:
    """Integer codes of ``values`` numbered in the order their text sorts (``np.unique``'s
    order: grouping by them gives the groups in the order the text would), through the
    column's categories: no per-cell strings (~50 bytes a cell). Missing values: -1."""
    series = pd.Series(values, copy=False)
    cat = series.array if isinstance(series.dtype, pd.CategoricalDtype) else pd.Categorical(series)
    names = np.asarray(pd.Index(cat.categories).astype(str), dtype=object)
    rank = np.empty(len(names), dtype=np.int64)
    rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    codes = np.asarray(cat.codes)
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)
