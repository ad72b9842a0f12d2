"""Per-chunk kernels of out-of-core preprocessing (numpy/scipy; no I/O, no dask).

Each takes one CSR chunk of raw counts (cells x all genes) with per-row arrays for the
same cells, and returns small per-chunk sums that are added up across chunks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

GRAM_BLOCK = 2048  # rows densified at a time for X'X (2,048 x 2,000 float64 = 33 MB)
Moments = dict[int, np.ndarray]  # batch code -> (3, n_genes): n, sum, sum of squares


def _rows_nnz(x: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and float64 values of the stored entries of the selected rows."""
    mask = np.repeat(rows, np.diff(x.indptr))
    return x.indices[mask], x.data[mask].astype(np.float64)


def batch_moments(x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray) -> Moments:
    """Per batch present in the chunk: cell count, per-gene sum and sum of squares."""
    x = sp.csr_matrix(x)
    out: Moments = {}
    for b in np.unique(batch[keep]):
        rows = keep & (batch == b)
        idx, data = _rows_nnz(x, rows)
        acc = np.zeros((3, x.shape[1]))
        acc[0, 0] = rows.sum()
        acc[1] = np.bincount(idx, weights=data, minlength=x.shape[1])
        acc[2] = np.bincount(idx, weights=data * data, minlength=x.shape[1])
        out[int(b)] = acc
    return out


def clipped_moments(
    x: sp.spmatrix, batch: np.ndarray, keep: np.ndarray, clip: np.ndarray
) -> Moments:
    """Per batch: per-gene sum and sum of squares of counts clipped at ``clip[batch]``."""
    x = sp.csr_matrix(x)
    out: Moments = {}
    for b in np.unique(batch[keep]):
        idx, data = _rows_nnz(x, keep & (batch == b))
        data = np.minimum(data, clip[b][idx])
        acc = np.zeros((3, x.shape[1]))
        acc[1] = np.bincount(idx, weights=data, minlength=x.shape[1])
        acc[2] = np.bincount(idx, weights=data * data, minlength=x.shape[1])
        out[int(b)] = acc
    return out


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
        block = y[start : start + GRAM_BLOCK].toarray()
        g += block.T @ block
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
