"""Scrublet doublet scores for one sample's count matrix (numpy/scipy/faiss; no I/O).

The algorithm and every default are those of Wolock et al. (Cell Systems 2019) as
scanpy's `pp.scrublet` runs them: genes seen in >= 3 cells; highly variable genes by the
seurat dispersion rule on the median-normalized, log1p data; doublets simulated by adding
the raw counts of random pairs of observed cells (the same pairs as scanpy for the same
seed); both normalized to 1e6 and scaled to unit variance per gene; a truncated SVD fitted
on the observed cells; a k-nearest-neighbour classifier over observed + simulated cells;
the threshold at the minimum between the two modes of the simulated scores.

Three steps are computed differently, for speed (benchmarked in docs/benchmarks.md; the
scores equal scanpy's, tests/qc/test_doublets.py): the SVD from the top eigenvectors of
the small gene-by-gene Gram matrix (Lanczos to machine precision, where scanpy runs
ARPACK on the scaled matrix itself; the Gram summed from dense float32 blocks by BLAS,
2-3x scipy's sparse product); the simulated
doublets embedded as row-scaled sums of their parents' projections (the map is linear),
so they are never built as a matrix; and the exact neighbours by faiss's brute-force
search (`IndexFlatL2`, BLAS blocks) instead of scikit-learn's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True)
class DoubletScores:
    score: np.ndarray  # per observed cell; NaN where the cell had < 3 detected genes
    called: np.ndarray  # bool per observed cell
    threshold: float  # NaN when no threshold could be found (then nothing is called)
    n_neighbors: int


def _seurat_hvg(
    mean: np.ndarray,
    var: np.ndarray,
    *,
    min_mean: float = 0.0125,
    max_mean: float = 3.0,
    min_disp: float = 0.5,
    n_bins: int = 20,
) -> np.ndarray:
    """Boolean mask of scanpy's `highly_variable_genes(flavor="seurat")` from the per-gene
    mean and variance of the normalized (not yet log-transformed) data."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    disp = np.log(disp)
    mean = np.log1p(mean)
    frame = pd.DataFrame({"mean": mean, "disp": disp})
    frame["bin"] = pd.cut(frame["mean"], bins=n_bins)
    stats = frame.groupby("bin", observed=True)["disp"].agg(avg="mean", dev="std")
    single = stats["dev"].isna()
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0.0
    per_gene = stats.loc[frame["bin"]].to_numpy()
    norm_disp = (disp - per_gene[:, 0]) / per_gene[:, 1]
    norm_disp = np.nan_to_num(norm_disp, nan=-np.inf)
    return (mean > min_mean) & (mean < max_mean) & (norm_disp > min_disp)


def _column_mean_var(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance (ddof=1) of a CSR matrix, in float64."""
    n = x.shape[0]
    squares = sp.csr_matrix((x.data.astype(np.float64) ** 2, x.indices, x.indptr), shape=x.shape)
    mean = np.asarray(x.sum(axis=0), dtype=np.float64).ravel() / n
    sq = np.asarray(squares.sum(axis=0)).ravel() / n
    return mean, np.maximum(sq - mean**2, 0.0) * (n / (n - 1))


@numba.njit(cache=True)
def _cells_per_gene(indptr, indices, rows, n_genes):  # type: ignore[no-untyped-def,unused-ignore]
    out = np.zeros(n_genes, dtype=np.int64)
    for i in rows:
        for k in range(indptr[i], indptr[i + 1]):
            out[indices[k]] += 1
    return out


@numba.njit(cache=True)
def _entries_and_totals(indptr, indices, data, rows, gene_ok):  # type: ignore[no-untyped-def,unused-ignore]
    """Per selected row: stored entries and count total over the genes in ``gene_ok``."""
    entries = np.zeros(rows.size, dtype=np.int64)
    totals = np.zeros(rows.size)
    for r in range(rows.size):
        i = rows[r]
        for k in range(indptr[i], indptr[i + 1]):
            if gene_ok[indices[k]]:
                entries[r] += 1
                totals[r] += data[k]
    return entries, totals


@numba.njit(cache=True)
def _scaled_moments(indptr, indices, data, rows, weight, n_genes):  # type: ignore[no-untyped-def,unused-ignore]
    """Per gene: sum and sum of squares of count * weight[r] over the selected rows
    (accumulated in row order, as scipy sums a CSR matrix's columns)."""
    s1 = np.zeros(n_genes)
    s2 = np.zeros(n_genes)
    for r in range(rows.size):
        i = rows[r]
        for k in range(indptr[i], indptr[i + 1]):
            v = data[k] * weight[r]
            s1[indices[k]] += v
            s2[indices[k]] += v * v
    return s1, s2


@numba.njit(cache=True)
def _submatrix(indptr, indices, data, rows, position):  # type: ignore[no-untyped-def,unused-ignore]
    """CSR arrays of the selected rows and of the columns with position >= 0 (positions
    increasing with the column, so indices stay sorted)."""
    new_indptr = np.zeros(rows.size + 1, dtype=np.int64)
    for r in range(rows.size):
        i = rows[r]
        n = 0
        for k in range(indptr[i], indptr[i + 1]):
            if position[indices[k]] >= 0:
                n += 1
        new_indptr[r + 1] = new_indptr[r] + n
    new_indices = np.empty(new_indptr[-1], dtype=np.int32)
    new_data = np.empty(new_indptr[-1], dtype=data.dtype)
    for r in range(rows.size):
        i = rows[r]
        j = new_indptr[r]
        for k in range(indptr[i], indptr[i + 1]):
            p = position[indices[k]]
            if p >= 0:
                new_indices[j] = p
                new_data[j] = data[k]
                j += 1
    return new_indptr, new_indices, new_data


def _row_totals(x: sp.csr_matrix) -> np.ndarray:
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    totals[totals == 0] = 1.0
    return totals


def _scaled(x: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """x with row i multiplied by rows[i]; float64."""
    factor = np.repeat(rows, np.diff(x.indptr))
    return sp.csr_matrix((x.data * factor, x.indices, x.indptr), shape=x.shape)


def simulate_pairs(n_obs: int, n_sim: int, seed: int) -> np.ndarray:
    """The parent pairs scanpy's scrublet draws for the same seed: (n_sim, 2) indices."""
    from sklearn.utils.random import sample_without_replacement

    idx = sample_without_replacement(n_obs * n_obs, n_sim, random_state=seed)
    return np.vstack(np.unravel_index(idx, (n_obs, n_obs))).T


GRAM_BLOCK = 2048  # rows densified at a time for the Gram matrix


@numba.njit(cache=True)
def _fill_scaled_rows(indptr, indices, data, start, row_scale, col_scale, out):  # type: ignore[no-untyped-def,unused-ignore]
    """out[r, j] = x[start + r, j] * row_scale[start + r] * col_scale[j] for the stored
    entries of the rows start .. start + len(out); returns their column sums (float64)."""
    sums = np.zeros(out.shape[1])
    for r in range(out.shape[0]):
        i = start + r
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            v = data[k] * row_scale[i] * col_scale[j]
            out[r, j] = v
            sums[j] += v
    return sums


def scaled_gram(
    x: sp.csr_matrix, row_scale: np.ndarray, col_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Y'Y and the column sums of Y = diag(row_scale) x diag(col_scale), never building Y:
    rows written from the CSR arrays into dense float32 blocks (numba) and multiplied by
    BLAS (float32, 2-3x scipy's sparse product), summed in float64."""
    n, m = x.shape
    gram = np.zeros((m, m))
    sums = np.zeros(m)
    block = np.empty((min(GRAM_BLOCK, max(n, 1)), m), dtype=np.float32)
    rows = np.asarray(row_scale, dtype=np.float64)
    cols = np.asarray(col_scale, dtype=np.float64)
    for start in range(0, n, GRAM_BLOCK):
        b = block[: min(GRAM_BLOCK, n - start)]
        b.fill(0)
        sums += _fill_scaled_rows(x.indptr, x.indices, x.data, start, rows, cols, b)
        gram += b.T @ b
    return gram, sums


def _principal_axes(
    x: sp.csr_matrix, row_scale: np.ndarray, col_scale: np.ndarray, n_comps: int, center: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Top right singular vectors of Y = diag(row_scale) x diag(col_scale) (or of Y
    centred), from the Gram matrix (`scaled_gram`); and Y's column mean.

    The eigenvectors by Lanczos (ARPACK on the dense Gram, converged to machine
    precision: 0.6x LAPACK's subset solver for 1,500 genes and 30 axes, the same
    vectors), LAPACK where ARPACK cannot (too few genes) or does not converge."""
    from scipy.linalg import eigh
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    n, m = x.shape
    gram, sums = scaled_gram(x, row_scale, col_scale)
    mean = sums / n
    if center:
        gram -= n * np.outer(mean, mean)
    n_comps = min(n_comps, m)
    try:
        if n_comps >= m - 1:
            raise ArpackNoConvergence("too few genes for ARPACK", None, None)
        values, vectors = eigsh(gram, k=n_comps, which="LA", tol=0, v0=np.ones(m))
        vectors = vectors[:, np.argsort(values, kind="stable")]
    except ArpackNoConvergence:
        _, vectors = eigh(gram, subset_by_index=[m - n_comps, m - 1])
    top = vectors[:, ::-1].copy()
    top *= np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
    return top, mean if center else np.zeros_like(mean)


def nearest_sim_counts(
    obs: np.ndarray, sim: np.ndarray, k: int, queries: np.ndarray | None = None
) -> np.ndarray:
    """How many of each query's k nearest neighbours (itself included) are simulated.

    Exact euclidean search over observed + simulated points (faiss `IndexFlatL2`); the
    queries are rows of the stacked [obs; sim] points (all of them by default).
    """
    import faiss

    points = np.ascontiguousarray(np.vstack([obs, sim]), dtype=np.float32)
    index = faiss.IndexFlatL2(points.shape[1])
    index.add(points)
    asked = points if queries is None else np.ascontiguousarray(points[queries])
    _, neighbours = index.search(asked, k)
    return (neighbours >= obs.shape[0]).sum(axis=1)


def scrublet_scores(
    counts: sp.spmatrix,
    rows: np.ndarray | None = None,
    *,
    expected_rate: float,
    mean_center: bool,
    sim_scored_fraction: float,
    seed: int,
    stdev_rate: float = 0.02,
    sim_ratio: float = 2.0,
    n_comps: int = 30,
) -> DoubletScores:
    """Scrublet doublet scores and calls for one sample's raw counts (cells x genes), for
    the cells at ``rows`` (all by default; the results follow ``rows``' order).

    ``expected_rate``, ``mean_center`` and ``sim_scored_fraction`` are the qc section's
    ``expected_doublet_rate``, ``doublet_mean_center`` and ``doublet_sim_scored_fraction``
    (scanpy's ``sc.pp.scrublet``: 0.05, True and 1). Every simulated doublet is a
    neighbour candidate, as in scrublet; only a random ``sim_scored_fraction`` of them is scored for the automatic threshold (1: all, as
    scanpy). The observed cells' scores do not depend on it; the search time falls from
    3n to (1 + 2 * fraction) n queries.

    A simulated doublet's normalized profile is a row-scaled sum of its parents' raw
    counts, so its embedding is the same scaling of the sum of the parents' projected
    raw counts: simulated doublets are never built as a matrix.
    """
    from skimage.filters import threshold_minimum

    counts = sp.csr_matrix(counts)
    rows = np.arange(counts.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    n_total = rows.size
    ip, ix, data = counts.indptr, counts.indices, counts.data
    # genes seen in >= 3 of the cells, cells with >= 3 of those genes; no copies of the
    # matrix until the highly variable genes' columns are taken
    gene_ok = _cells_per_gene(ip, ix, rows, counts.shape[1]) >= 3
    entries, totals = _entries_and_totals(ip, ix, data, rows, gene_ok)
    cells = np.flatnonzero(entries >= 3)
    n_obs = cells.size
    totals = totals[cells]
    totals[totals == 0] = 1.0
    s1, s2 = _scaled_moments(ip, ix, data, rows[cells], np.median(totals) / totals, counts.shape[1])
    genes = np.flatnonzero(gene_ok)
    mean, sq = s1[genes] / n_obs, s2[genes] / n_obs
    var = np.maximum(sq - mean**2, 0.0) * (n_obs / (n_obs - 1))
    hvg_genes = genes[_seurat_hvg(mean, var)]
    position = np.full(counts.shape[1], -1, dtype=np.int64)
    position[hvg_genes] = np.arange(hvg_genes.size)
    raw = sp.csr_matrix(
        _submatrix(ip, ix, data, rows[cells], position)[::-1],
        shape=(n_obs, hvg_genes.size),
    )
    raw_totals = _row_totals(raw)
    n_sim = int(n_obs * sim_ratio)
    pairs = simulate_pairs(n_obs, n_sim, seed)

    # observed cells normalized to 1e6 and scaled to unit variance per gene
    obs = _scaled(raw, 1e6 / raw_totals)
    std = np.sqrt(_column_mean_var(obs)[1])
    std[std == 0] = 1.0
    axes, centre = _principal_axes(raw, 1e6 / raw_totals, 1 / std, n_comps, mean_center)
    projected = np.asarray(raw @ (axes / std[:, None]))  # raw counts onto the scaled axes
    offset = centre @ axes
    emb_obs = projected * (1e6 / raw_totals)[:, None] - offset
    parent_totals = raw_totals[pairs[:, 0]] + raw_totals[pairs[:, 1]]
    emb_sim = (projected[pairs[:, 0]] + projected[pairs[:, 1]]) * (1e6 / parent_totals)[
        :, None
    ] - offset

    k = round(0.5 * np.sqrt(n_obs))
    k_adj = round(k * (1 + n_sim / float(n_obs)))
    n_scored = max(1, round(n_sim * sim_scored_fraction))
    scored = np.random.default_rng(seed).permutation(n_sim)[:n_scored]
    queries = (
        None if n_scored == n_sim else np.concatenate([np.arange(n_obs), n_obs + np.sort(scored)])
    )
    n_sim_neigh = nearest_sim_counts(emb_obs, emb_sim, k_adj, queries)

    rho, r, n = expected_rate, n_sim / float(n_obs), float(k_adj)
    q = (n_sim_neigh.astype(np.float64) + 1) / (n + 2)
    ld = q * rho / r / (1 - rho - q * (1 - rho - rho / r))
    ld_obs, ld_sim = ld[:n_obs], ld[n_obs:]
    try:
        threshold = float(threshold_minimum(ld_sim))
    except RuntimeError:
        threshold = float("nan")
    score = np.full(n_total, np.nan)
    score[cells] = ld_obs
    called = np.zeros(n_total, dtype=bool)
    if np.isfinite(threshold):
        called[cells] = ld_obs > threshold
    return DoubletScores(score=score, called=called, threshold=threshold, n_neighbors=k_adj)
