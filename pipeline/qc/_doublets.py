"""Scrublet doublet scores for one sample's count matrix (numpy/scipy/faiss; no I/O).

The algorithm and every default are those of Wolock et al. (Cell Systems 2019) as
scanpy's `pp.scrublet` runs them: genes seen in >= 3 cells; highly variable genes by the
seurat dispersion rule on the median-normalized, log1p data; doublets simulated by adding
the raw counts of random pairs of observed cells (the same pairs as scanpy for the same
seed); both normalized to 1e6 and scaled to unit variance per gene; a truncated SVD fitted
on the observed cells; a k-nearest-neighbour classifier over observed + simulated cells;
the threshold at the minimum between the two modes of the simulated scores.

Three steps are computed differently, for speed (benchmarked in docs/benchmarks.md; the
scores equal scanpy's, tests/qc/test_doublets.py): the SVD from the eigendecomposition of
the small gene-by-gene Gram matrix (exact, where scanpy runs ARPACK); the simulated
doublets embedded as row-scaled sums of their parents' projections (the map is linear),
so they are never built as a matrix; and the exact neighbours by faiss's brute-force
search (`IndexFlatL2`, BLAS blocks) instead of scikit-learn's.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    norm: sp.csr_matrix,
    *,
    min_mean: float = 0.0125,
    max_mean: float = 3.0,
    min_disp: float = 0.5,
    n_bins: int = 20,
) -> np.ndarray:
    """Boolean mask of scanpy's `highly_variable_genes(flavor="seurat")` on log1p(norm)."""
    mean, var = _column_mean_var(norm)
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


def _row_totals(x: sp.csr_matrix) -> np.ndarray:
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    totals[totals == 0] = 1.0
    return totals


def _scaled(x: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray | None = None) -> sp.csr_matrix:
    """x with row i multiplied by rows[i] (and column j by cols[j]); float64."""
    factor = np.repeat(rows, np.diff(x.indptr))
    if cols is not None:
        factor = factor * cols[x.indices]
    return sp.csr_matrix((x.data * factor, x.indices, x.indptr), shape=x.shape)


def simulate_pairs(n_obs: int, n_sim: int, seed: int) -> np.ndarray:
    """The parent pairs scanpy's scrublet draws for the same seed: (n_sim, 2) indices."""
    from sklearn.utils.random import sample_without_replacement

    idx = sample_without_replacement(n_obs * n_obs, n_sim, random_state=seed)
    return np.vstack(np.unravel_index(idx, (n_obs, n_obs))).T


def _principal_axes(y: sp.csr_matrix, n_comps: int, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top right singular vectors of y (or of y centred), from the Gram matrix; and the mean."""
    from scipy.linalg import eigh

    n, m = y.shape
    mean = np.asarray(y.sum(axis=0)).ravel() / n
    gram = (y.T @ y).toarray()
    if center:
        gram -= n * np.outer(mean, mean)
    n_comps = min(n_comps, m)
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
    *,
    expected_rate: float = 0.05,
    stdev_rate: float = 0.02,
    sim_ratio: float = 2.0,
    n_comps: int = 30,
    mean_center: bool = False,
    sim_scored_fraction: float = 1.0,
    seed: int = 0,
) -> DoubletScores:
    """Scrublet doublet scores and calls for one sample's raw counts (cells x genes).

    Every simulated doublet is a neighbour candidate, as in scrublet; only a random
    ``sim_scored_fraction`` of them is scored for the automatic threshold (1: all, as
    scanpy). The observed cells' scores do not depend on it; the search time falls from
    3n to (1 + 2 * fraction) n queries.

    A simulated doublet's normalized profile is a row-scaled sum of its parents' raw
    counts, so its embedding is the same scaling of the sum of the parents' projected
    raw counts: simulated doublets are never built as a matrix.
    """
    from skimage.filters import threshold_minimum

    counts = sp.csr_matrix(counts)
    n_total = counts.shape[0]
    genes = np.flatnonzero(np.bincount(counts.indices, minlength=counts.shape[1]) >= 3)
    x = counts[:, genes]
    cells = np.flatnonzero(np.diff(x.indptr) >= 3)
    x = x[cells]
    n_obs = x.shape[0]
    totals = _row_totals(x)
    hvg = _seurat_hvg(_scaled(x, np.median(totals) / totals))
    raw = x[:, hvg]
    raw_totals = _row_totals(raw)
    n_sim = int(n_obs * sim_ratio)
    pairs = simulate_pairs(n_obs, n_sim, seed)

    # observed cells normalized to 1e6 and scaled to unit variance per gene
    obs = _scaled(raw, 1e6 / raw_totals)
    std = np.sqrt(_column_mean_var(obs)[1])
    std[std == 0] = 1.0
    axes, centre = _principal_axes(_scaled(obs, np.ones(n_obs), 1 / std), n_comps, mean_center)
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
