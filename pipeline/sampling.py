"""Subsamples stratified by group: what Harmony, scVI, Leiden, the UMAP and the marker
models are fitted on when a cohort is larger than their configured limit."""

from __future__ import annotations

import numpy as np


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
