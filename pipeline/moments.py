"""Per-gene moments of raw counts by batch, in one pass over a CSR chunk (numba; no I/O).

Seurat v3's highly variable genes need each batch's per-gene mean and variance of the raw
counts, then of the counts clipped at a per-gene bound. The qc stage computes the first
pass per sample while it has the counts in memory; the preprocess stage sums them per
batch and makes the second pass. Both use these kernels, so neither stage imports the
other's.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

Moments = dict[int, np.ndarray]  # batch code -> (3, n_genes): n, sum, sum of squares


@numba.njit(cache=True)
def _sums(indptr, indices, data, slot, clip, n_slots, n_genes):
    """Per slot (-1 skips the row): row count, per-gene sum and sum of squares of
    min(count, clip[slot, gene]), in one pass over the stored entries."""
    out = np.zeros((n_slots, 3, n_genes))
    for i in range(indptr.size - 1):
        b = slot[i]
        if b < 0:
            continue
        out[b, 0, 0] += 1.0
        for k in range(indptr[i], indptr[i + 1]):
            g = indices[k]
            v = min(float(data[k]), clip[b, g])
            out[b, 1, g] += v
            out[b, 2, g] += v * v
    return out


def clipped_moments(
    x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray, clip: np.ndarray | None = None
) -> Moments:
    """Per batch present among the kept cells: cell count, per-gene sum and sum of squares
    of the counts, clipped at ``clip[batch]`` when given (Seurat v3's second pass)."""
    x = sp.csr_matrix(x)
    present = np.unique(batch[keep])
    slot = np.full(batch.size, -1, dtype=np.int64)
    slot[keep] = np.searchsorted(present, batch[keep])
    bound = np.full((present.size, x.shape[1]), np.inf) if clip is None else clip[present]
    sums = _sums(x.indptr, x.indices, x.data, slot, bound, present.size, x.shape[1])
    return {int(b): sums[j] for j, b in enumerate(present)}


def batch_moments(x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray) -> Moments:
    """Per batch present among the kept cells: cell count, per-gene sum and sum of squares."""
    return clipped_moments(x, batch, keep)


def add_moments(a: Moments, b: Moments) -> Moments:
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out else v
    return out
