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
def _sums(indptr, indices, data, slot, clip, n_slots, n_genes, position, take):
    """Per slot (-1 skips the row): row count, per-gene sum and sum of squares of
    min(count, clip[slot, gene]), in one pass over the stored entries; with ``take``, in
    the same pass the kept rows' raw counts of the columns with a position (>= 0) as CSR
    arrays (positions increase with the column, so indices stay sorted)."""
    out = np.zeros((n_slots, 3, n_genes))
    rows = 0
    bound = 0
    if take:
        for i in range(indptr.size - 1):
            if slot[i] >= 0:
                rows += 1
                bound += indptr[i + 1] - indptr[i]
    # an upper bound: np.empty's pages are touched only where written (~a fifth here)
    new_indptr = np.zeros(rows + 1, dtype=np.int64)
    new_indices = np.empty(bound, dtype=np.int32)
    new_data = np.empty(bound, dtype=data.dtype)
    r = 0
    j = 0
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
            if take and position[g] >= 0:
                new_indices[j] = position[g]
                new_data[j] = data[k]
                j += 1
        if take:
            r += 1
            new_indptr[r] = j
    return out, new_indptr, new_indices[:j].copy(), new_data[:j].copy()


def _moments(
    x: sp.csr_matrix, batch: np.ndarray, keep: np.ndarray, clip: np.ndarray | None,
    position: np.ndarray | None,
) -> tuple[Moments, tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    present = np.unique(batch[keep])
    slot = np.full(batch.size, -1, dtype=np.int64)
    slot[keep] = np.searchsorted(present, batch[keep])
    bound = np.full((present.size, x.shape[1]), np.inf) if clip is None else clip[present]
    take = position is not None
    where = np.zeros(0, dtype=np.int64) if position is None else position
    sums, *rows = _sums(
        x.indptr, x.indices, x.data, slot, bound, present.size, x.shape[1], where, take
    )
    return {int(b): sums[j] for j, b in enumerate(present)}, (rows[0], rows[1], rows[2])


def clipped_moments(
    x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray, clip: np.ndarray | None = None
) -> Moments:
    """Per batch present among the kept cells: cell count, per-gene sum and sum of squares
    of the counts, clipped at ``clip[batch]`` when given (Seurat v3's second pass)."""
    return _moments(sp.csr_matrix(x), batch, keep, clip, None)[0]


def clipped_moments_and_rows(
    x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray, clip: np.ndarray, genes: np.ndarray
) -> tuple[Moments, sp.csr_matrix]:
    """`clipped_moments` and, from the same pass over the stored entries, ``x[keep][:,
    genes]`` (``genes`` sorted; raw counts, CSR): scipy's two fancy indexings took longer
    than the moments themselves."""
    x = sp.csr_matrix(x)
    position = np.full(x.shape[1], -1, dtype=np.int64)
    position[genes] = np.arange(genes.size)
    moments, (indptr, indices, data) = _moments(x, batch, keep, clip, position)
    shape = (int(np.count_nonzero(keep)), int(genes.size))
    return moments, sp.csr_matrix((data, indices, indptr), shape=shape)


def batch_moments(x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray) -> Moments:
    """Per batch present among the kept cells: cell count, per-gene sum and sum of squares."""
    return clipped_moments(x, batch, keep)


def add_moments(a: Moments, b: Moments) -> Moments:
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out else v
    return out
