"""Pure kernels of the expression stage (numpy/scipy; no stores, no cluster).

`group_sums`: the summed raw counts of one chunk's cells per pseudobulk group.
`filter_by_expr`: edgeR's ``filterByExpr`` (edgeR 4, the default method): a gene is kept
when its CPM reaches ``min_count / median(library size) * 1e6`` in at least the smallest
group's number of samples (``1 / max(hat values)`` of the design; above ``large_n``
samples only ``min_prop`` of the excess counts) and its total count reaches
``min_total_count``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SLICE_CELLS = 4096


def group_sums(block: sp.csr_matrix, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The groups present among the chunk's cells and their summed counts (groups x
    genes, int64). ``codes``: the group of each cell (-1 for none), or cells x k with up
    to k groups per cell (a B cell counts towards lineage B and towards its subset)."""
    codes = np.asarray(codes).reshape(block.shape[0], -1)
    block = sp.csr_matrix(block)
    cell, slot = np.nonzero(codes >= 0)
    groups, which = np.unique(codes[cell, slot], return_inverse=True)
    sums = np.zeros((groups.size, block.shape[1]), dtype=np.int64)
    for start in range(0, block.shape[0], SLICE_CELLS):  # int64 copies of a slice at a time
        stop = min(start + SLICE_CELLS, block.shape[0])
        inside = (cell >= start) & (cell < stop)
        indicator = sp.csr_matrix(
            (np.ones(int(inside.sum()), dtype=np.int64), (which[inside], cell[inside] - start)),
            shape=(groups.size, stop - start),
        )
        sums += (indicator @ block[start:stop].astype(np.int64)).toarray()
    return groups.astype(np.int64), sums


def hat_values(x: np.ndarray) -> np.ndarray:
    """Leverages of the rows of a full-column-rank design (R's ``hat`` with the intercept
    in the column space, as every design here has)."""
    q, _ = np.linalg.qr(np.asarray(x, dtype=float))
    return np.einsum("ij,ij->i", q, q)


def filter_by_expr(
    counts: np.ndarray,
    design: np.ndarray,
    *,
    min_count: float = 10.0,
    min_total_count: float = 15.0,
    large_n: float = 10.0,
    min_prop: float = 0.7,
) -> np.ndarray:
    """Boolean mask of the genes to keep (``counts``: samples x genes)."""
    counts = np.asarray(counts, dtype=float)
    lib = counts.sum(axis=1)
    min_size = 1.0 / hat_values(design).max()
    if min_size > large_n:
        min_size = large_n + (min_size - large_n) * min_prop
    cutoff = min_count / np.median(lib) * 1e6
    cpm = counts / np.where(lib > 0, lib, 1.0)[:, None] * 1e6
    tol = 1e-14
    keep_cpm = (cpm >= cutoff).sum(axis=0) >= min_size - tol
    keep_total = counts.sum(axis=0) >= min_total_count - tol
    return keep_cpm & keep_total
