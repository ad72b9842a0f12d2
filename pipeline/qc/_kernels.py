"""Per-cell QC metrics of a CSR chunk, in one pass (numba; no I/O).

Definitions are scanpy's `calculate_qc_metrics`: total counts, genes with counts > 0,
percent of counts in gene sets, percent of counts in the cell's top-N genes.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

METRICS: tuple[str, ...] = (
    "total_counts",
    "n_genes_by_counts",
    "pct_counts_mt",
    "pct_counts_ribo",
    "pct_counts_hb",
    "pct_counts_in_top_20_genes",
)
TOP_N = 20


@numba.njit(cache=True)
def _row_metrics(indptr, indices, data, gene_set, n_top):  # type: ignore[no-untyped-def,unused-ignore]
    n = indptr.size - 1
    out = np.zeros((n, 6), dtype=np.float64)
    for i in range(n):
        start, stop = indptr[i], indptr[i + 1]
        total = 0.0
        detected = 0
        sets = np.zeros(3, dtype=np.float64)
        for k in range(start, stop):
            v = float(data[k])
            total += v
            if v > 0:
                detected += 1
            g = gene_set[indices[k]]
            if g > 0:
                sets[g - 1] += v
        m = stop - start
        if m > n_top:  # the n_top largest by selection, not a full sort
            top = np.partition(data[start:stop].astype(np.float64), m - n_top)[m - n_top :].sum()
        else:
            top = data[start:stop].astype(np.float64).sum()
        out[i, 0] = total
        out[i, 1] = detected
        if total > 0:
            out[i, 2] = 100.0 * sets[0] / total
            out[i, 3] = 100.0 * sets[1] / total
            out[i, 4] = 100.0 * sets[2] / total
            out[i, 5] = 100.0 * top / total
    return out


def gene_sets(symbols: np.ndarray) -> np.ndarray:
    """Per gene: 1 mitochondrial (MT-), 2 ribosomal (RPS/RPL), 3 haemoglobin, else 0.

    The patterns are scanpy's / single-cell best practices' (haemoglobin: ^HB[^(P)]).
    """
    s = np.asarray(symbols, dtype=str)
    codes = np.zeros(s.size, dtype=np.int8)
    codes[np.char.startswith(s, "MT-")] = 1
    codes[np.char.startswith(s, "RPS") | np.char.startswith(s, "RPL")] = 2
    hb = np.array([len(x) > 2 and x.startswith("HB") and x[2] not in "(P)" for x in s])
    codes[hb] = 3
    return codes


def qc_metrics(x: sp.csr_matrix | sp.csr_array, gene_set: np.ndarray) -> np.ndarray:
    """A (cells x 6) float64 array of `METRICS` for the CSR chunk ``x``."""
    x = sp.csr_matrix(x)
    return _row_metrics(x.indptr, x.indices, x.data, gene_set, TOP_N)
