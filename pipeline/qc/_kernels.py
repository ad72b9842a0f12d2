"""Per-cell QC metrics of a CSR chunk, in one pass (numba; no I/O).

Definitions are scanpy's `calculate_qc_metrics`: total counts, genes with counts > 0,
percent of counts in gene sets, percent of counts in the cell's top-N genes. Two more:
the percent of counts in immunoglobulin genes, and the top-N percent computed without
them (what scanpy gives on the non-immunoglobulin genes): antibody-secreting cells spend
most of their counts on a few immunoglobulin transcripts, so the plain top-N share would
flag every plasmablast as a low-complexity outlier.
"""

from __future__ import annotations

import re

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
    "pct_counts_ig",
    "pct_counts_in_top_20_non_ig_genes",
)
TOP_N = 20


@numba.njit(cache=True)
def _keep_largest(top, v):  # type: ignore[no-untyped-def,unused-ignore]
    """Insert v into ``top`` (ascending, fixed length) if it beats the smallest."""
    if v <= top[0]:
        return
    j = 0
    while j + 1 < top.size and top[j + 1] < v:
        top[j] = top[j + 1]
        j += 1
    top[j] = v


@numba.njit(cache=True)
def _row_metrics(indptr, indices, data, gene_set, n_top):  # type: ignore[no-untyped-def,unused-ignore]
    n = indptr.size - 1
    out = np.zeros((n, 8), dtype=np.float64)
    top = np.zeros(n_top, dtype=np.float64)  # the row's n_top largest counts, ascending
    top_rest = np.zeros(n_top, dtype=np.float64)  # the same without immunoglobulin genes
    for i in range(n):
        start, stop = indptr[i], indptr[i + 1]
        total = 0.0
        detected = 0
        sets = np.zeros(4, dtype=np.float64)
        top[:] = 0.0
        top_rest[:] = 0.0
        for k in range(start, stop):
            v = float(data[k])
            total += v
            if v > 0:
                detected += 1
            g = gene_set[indices[k]]
            if g > 0:
                sets[g - 1] += v
            _keep_largest(top, v)  # a selection, not a sort: most counts are 1 or 2
            if g != 4:
                _keep_largest(top_rest, v)
        out[i, 0] = total
        out[i, 1] = detected
        if total > 0:
            out[i, 2] = 100.0 * sets[0] / total
            out[i, 3] = 100.0 * sets[1] / total
            out[i, 4] = 100.0 * sets[2] / total
            out[i, 5] = 100.0 * top.sum() / total
            out[i, 6] = 100.0 * sets[3] / total
        if total - sets[3] > 0:
            out[i, 7] = 100.0 * top_rest.sum() / (total - sets[3])
    return out


# Immunoglobulin genes: heavy/light constant, variable, diversity and joining segments,
# the surrogate light chain, and the joining chain of secreted IgA/IgM.
IMMUNOGLOBULIN = re.compile(
    r"^(IG[HKL][VJ][0-9A-Z/-]*|IGHD[0-9][0-9A-Z/-]*|IGKC|IGLC[0-9]+|IGH[MDE]|IGH[GA][0-9]"
    r"|IGLL[0-9]+|JCHAIN)$"
)


def gene_sets(symbols: np.ndarray) -> np.ndarray:
    """Per gene: 1 mitochondrial (MT-), 2 ribosomal (RPS/RPL), 3 haemoglobin,
    4 immunoglobulin (`IMMUNOGLOBULIN`), else 0.

    The first three patterns are scanpy's / single-cell best practices' (haemoglobin:
    ^HB[^(P)]).
    """
    s = np.asarray(symbols, dtype=str)
    codes = np.zeros(s.size, dtype=np.int8)
    codes[np.char.startswith(s, "MT-")] = 1
    codes[np.char.startswith(s, "RPS") | np.char.startswith(s, "RPL")] = 2
    hb = np.array([len(x) > 2 and x.startswith("HB") and x[2] not in "(P)" for x in s])
    codes[hb] = 3
    codes[np.array([bool(IMMUNOGLOBULIN.match(x)) for x in s], dtype=bool)] = 4
    return codes


def qc_metrics(x: sp.csr_matrix | sp.csr_array, gene_set: np.ndarray) -> np.ndarray:
    """A (cells x 8) float64 array of `METRICS` for the CSR chunk ``x``."""
    x = sp.csr_matrix(x)
    return _row_metrics(x.indptr, x.indices, x.data, gene_set, TOP_N)
