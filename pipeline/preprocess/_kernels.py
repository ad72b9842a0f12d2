"""Per-chunk kernels of out-of-core preprocessing (numpy/scipy; no I/O, no dask).

Each takes one CSR chunk of raw counts (cells x all genes) with per-row arrays for the
same cells, and returns small per-chunk sums that are added up across chunks.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

GRAM_BLOCK = 2048  # rows densified at a time for X'X (2,048 x 2,000 float32 = 16 MB)
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


def log_normalized(
    x: sp.spmatrix, keep: np.ndarray, genes: np.ndarray, total: np.ndarray, target_sum: float
) -> sp.csr_matrix:
    """log1p(counts / total * target_sum) of the kept cells, restricted to ``genes``.

    ``total`` is each cell's count over all genes (scanpy's normalize_total before the
    highly variable genes are selected).
    """
    x = sp.csr_matrix(x)[keep][:, genes]
    scale = target_sum / total[keep]
    y = sp.csr_matrix(x.multiply(scale[:, None]), dtype=np.float64)
    np.log1p(y.data, out=y.data)
    return y


def gram(
    x: sp.spmatrix, keep: np.ndarray, genes: np.ndarray, total: np.ndarray, target_sum: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """(n, column sums, X'X) of the log-normalized kept cells on ``genes``."""
    y = log_normalized(x, keep, genes, total, target_sum)
    g = np.zeros((genes.size, genes.size))
    for start in range(0, y.shape[0], GRAM_BLOCK):  # dense BLAS on row blocks
        block = y[start : start + GRAM_BLOCK].astype(np.float32).toarray()
        g += block.T @ block  # float32 BLAS per block (2x float64's speed), summed in float64
    return float(y.shape[0]), np.asarray(y.sum(axis=0)).ravel(), g


def add_gram(
    a: tuple[float, np.ndarray, np.ndarray], b: tuple[float, np.ndarray, np.ndarray]
) -> tuple[float, np.ndarray, np.ndarray]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def project(
    x: sp.spmatrix,
    keep: np.ndarray,
    genes: np.ndarray,
    total: np.ndarray,
    target_sum: float,
    mean: np.ndarray,
    components: np.ndarray,
) -> np.ndarray:
    """PC scores (float32) of every cell of the chunk; NaN for cells not kept."""
    out = np.full((keep.size, components.shape[1]), np.nan, dtype=np.float32)
    if keep.any():
        y = log_normalized(x, keep, genes, total, target_sum)
        out[keep] = (y @ components) - mean @ components
    return out
