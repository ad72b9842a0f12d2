"""Subsamples stratified by group: what Harmony, scVI, Leiden, the UMAP and the marker
models are fitted on when a cohort is larger than their configured limit."""

from __future__ import annotations

from itertools import pairwise

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
    # each group's positions in increasing order, from one stable sort (not a scan of
    # every item per group: 4M cells x 528 samples)
    order = np.argsort(groups, kind="stable")
    _, starts = np.unique(groups[order], return_index=True)
    for members in np.split(order, starts[1:]):
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


def rows_by_value(column: pd.Series) -> tuple[list[str], list[np.ndarray]]:
    """The column's values as text, in order of first appearance (missing values left
    out), and the rows holding each: from its category codes, no text per cell."""
    cat = column.array if isinstance(column.dtype, pd.CategoricalDtype) else pd.Categorical(column)
    codes = np.asarray(cat.codes)  # -1: missing, sorted first and cut off by the bounds
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(cat.categories) + 1))
    rows = [order[a:b] for a, b in pairwise(bounds)]
    present = sorted((r[0], c) for c, r in enumerate(rows) if r.size)
    return [str(cat.categories[c]) for _, c in present], [rows[c] for _, c in present]
