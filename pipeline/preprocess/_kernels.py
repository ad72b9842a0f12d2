"""Per-chunk kernels of out-of-core preprocessing (numpy/scipy; no I/O, no dask).

Each takes one CSR chunk of raw counts (cells x all genes) with per-row arrays for the
same cells, and returns small per-chunk sums that are added up across chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp

GRAM_BLOCK = 2048  # rows densified at a time for X'X (2,048 x 2,000 float32 = 16 MB)


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


@numba.njit(cache=True)
def _fill_log_rows(indptr, indices, data, rows, position, scale, out):  # type: ignore[no-untyped-def,unused-ignore]
    """out[r, position[g]] = log1p(count * scale[r]) for row rows[r]'s genes g with a
    position (>= 0); returns the float64 column sums of what it wrote."""
    sums = np.zeros(out.shape[1])
    for r in range(rows.size):
        i = rows[r]
        for k in range(indptr[i], indptr[i + 1]):
            p = position[indices[k]]
            if p >= 0:
                v = np.log1p(float(data[k]) * scale[r])
                out[r, p] = v
                sums[p] += v
    return sums


@numba.njit(cache=True)
def _project_rows(indptr, indices, data, rows, position, scale, components):  # type: ignore[no-untyped-def,unused-ignore]
    """Sum over each row's selected genes of log1p(count * scale) * components[position]."""
    out = np.zeros((rows.size, components.shape[1]))
    for r in range(rows.size):
        i = rows[r]
        for k in range(indptr[i], indptr[i + 1]):
            p = position[indices[k]]
            if p >= 0:
                v = np.log1p(float(data[k]) * scale[r])
                for c in range(components.shape[1]):
                    out[r, c] += v * components[p, c]
    return out


def _positions(genes: np.ndarray, n_genes: int) -> np.ndarray:
    position = np.full(n_genes, -1, dtype=np.int64)
    position[genes] = np.arange(genes.size)
    return position


def _log_blocks(
    x: sp.spmatrix, keep: np.ndarray, genes: np.ndarray, total: np.ndarray, target_sum: float
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The log-normalized kept rows on ``genes`` as dense float32 blocks of up to
    `GRAM_BLOCK` rows, written straight from the CSR arrays (numba; one buffer, refilled):
    (the block's first kept row, the block, its float64 column sums)."""
    x = sp.csr_matrix(x)
    rows = np.flatnonzero(keep)
    position = _positions(genes, x.shape[1])
    scale = target_sum / total[rows]
    block = np.empty((min(GRAM_BLOCK, max(rows.size, 1)), genes.size), dtype=np.float32)
    for start in range(0, rows.size, GRAM_BLOCK):
        part = rows[start : start + GRAM_BLOCK]
        b = block[: part.size]
        b.fill(0)
        sums = _fill_log_rows(
            x.indptr, x.indices, x.data, part, position, scale[start : start + GRAM_BLOCK], b
        )
        yield start, b, sums


def gram(
    x: sp.spmatrix, keep: np.ndarray, genes: np.ndarray, total: np.ndarray, target_sum: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """(n, column sums, X'X) of the log-normalized kept cells on ``genes``.

    Dense float32 blocks (`_log_blocks`) multiplied by BLAS, float32 per block (2x
    float64's speed), summed in float64; no intermediate sparse matrices.
    """
    g = np.zeros((genes.size, genes.size))
    sums = np.zeros(genes.size)
    for _, b, block_sums in _log_blocks(x, keep, genes, total, target_sum):
        sums += block_sums
        g += b.T @ b
    return float(np.count_nonzero(keep)), sums, g


def gram_times(
    x: sp.spmatrix,
    keep: np.ndarray,
    genes: np.ndarray,
    total: np.ndarray,
    target_sum: float,
    basis: np.ndarray,
) -> tuple[tuple[float, np.ndarray, float, np.ndarray], np.ndarray]:
    """((n, column sums, sum of squares, X'(X basis)), X basis) of the log-normalized kept
    cells on ``genes``: X'X applied to a few columns (``basis``: genes x q, q << genes),
    and the kept cells' coordinates on them (float32, kept cells x q, not centred).

    The dense float32 blocks of `gram`, multiplied by ``basis`` and back by BLAS: 2q / genes
    of X'X's arithmetic (a tenth for 100 columns of 2,000 genes), summed in float64.
    """
    basis32 = np.ascontiguousarray(basis, dtype=np.float32)
    n = np.count_nonzero(keep)
    coords = np.empty((n, basis.shape[1]), dtype=np.float32)
    product = np.zeros((genes.size, basis.shape[1]))
    sums = np.zeros(genes.size)
    squares = 0.0
    for start, b, block_sums in _log_blocks(x, keep, genes, total, target_sum):
        sums += block_sums
        squares += float(np.einsum("ij,ij->", b, b, dtype=np.float64))
        t = coords[start : start + b.shape[0]]
        np.matmul(b, basis32, out=t)
        product += b.T @ t
    return (float(n), sums, squares, product), coords


def project_coordinates(
    coords: np.ndarray, keep: np.ndarray, mixing: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """PC scores (float32) of every cell of a chunk from its kept cells' coordinates on a
    basis (`gram_times`): coords @ mixing - shift; NaN for cells not kept."""
    out = np.full((keep.size, mixing.shape[1]), np.nan, dtype=np.float32)
    out[keep] = np.asarray(coords, dtype=np.float64) @ mixing - shift
    return out


def add_sums(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Element-wise sum of two tuples of per-chunk sums (`gram`, `gram_times`)."""
    return tuple(x + y for x, y in zip(a, b, strict=True))


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
        x = sp.csr_matrix(x)
        rows = np.flatnonzero(keep)
        comps = np.ascontiguousarray(components, dtype=np.float64)
        scores = _project_rows(
            x.indptr, x.indices, x.data, rows, _positions(genes, x.shape[1]),
            target_sum / total[rows], comps,
        )  # fmt: skip
        out[keep] = scores - mean @ comps
    return out
