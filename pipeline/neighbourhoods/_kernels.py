"""Neighbourhoods of the kNN graph (Milo; Dann et al., Nat Biotechnol 2022): index cells
by refined sampling, their counts per sample, their majority labels and the spatial FDR
(pure numpy; no I/O).

A neighbourhood is an index cell and its ``k`` nearest cells in the integrated
embedding. Membership is kept as index arrays (neighbourhood x k), never as a dense
cells x neighbourhoods matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..graph import neighbours_of


@dataclass(frozen=True)
class Neighbourhoods:
    """Neighbourhoods over rows 0..n-1 of an embedding."""

    index_cells: np.ndarray  # neighbourhoods, ascending
    members: np.ndarray  # neighbourhoods x k: each index cell first, then its nearest
    kth_distance: np.ndarray  # from each index cell to its farthest member
    exact: bool  # exact neighbour search (else faiss's inverted-file index)

    @property
    def weights(self) -> np.ndarray:
        """Milo's spatial FDR weights: 1 / the k-th neighbour's distance."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.kth_distance.astype(float)


def make_neighbourhoods(
    x: np.ndarray,
    graph: sp.csr_matrix,
    k: int,
    *,
    prop: float,
    seed: int,
    exact_knn_below: int = 50_000,
    knn_seed: int = 0,
    max_index_cells: int | None = None,
) -> Neighbourhoods:
    """Index cells by refined sampling of ``prop`` of the rows of ``x`` (at most
    ``max_index_cells``) on ``graph`` (the graph stage's kNN distances over the same
    rows), each neighbourhood the index cell's ``k`` nearest cells in ``x`` searched as
    the graph stage searches (with the graph's k: exactly its rows)."""
    index = sample_index_cells(x, graph, np.arange(x.shape[0]), prop, seed, max_index_cells)
    nn = neighbours_of(x, index, k, exact_knn_below=exact_knn_below, seed=knn_seed)
    kth, exact = nn.distances[:, -1].copy(), nn.exact
    members = nn.indices.astype(np.int32) if x.shape[0] < 2**31 else nn.indices
    del nn  # its int64 indices: the largest array of the stage at a million cells
    return Neighbourhoods(index, members, kth, exact)


def refined_index_cells(
    x: np.ndarray, graph: sp.csr_matrix, sampled: np.ndarray, *, chunk: int = 10_000
) -> np.ndarray:
    """Milo's refined sampling: for each sampled cell, the cell among it and its graph
    neighbours (a row of ``graph``, self excluded) nearest to their median position in
    ``x``; the distinct cells found, ascending.

    ``x`` is cells x dimensions (rows as in ``graph``); ``sampled`` the rows drawn at
    random. A row with fewer neighbours than the widest is padded with the cell itself.
    """
    sampled = np.asarray(sampled, dtype=np.int64)
    width = int(np.diff(graph.indptr)[sampled].max(initial=0)) + 1
    out = np.empty(sampled.size, dtype=np.int64)
    for start in range(0, sampled.size, chunk):
        rows = sampled[start : start + chunk]
        members = graph_rows_with_self(graph.indptr, graph.indices, rows, width)
        out[start : start + rows.size] = nearest_to_median(members, x[members])
    return np.unique(out)


def graph_rows_with_self(
    indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, width: int, first_row: int = 0
) -> np.ndarray:
    """rows x ``width``: each row's cell, then its neighbours in a CSR graph
    (``indptr``, ``indices``; or a slice of one: ``indptr`` from row ``first_row`` on,
    ``indices`` from that row's first entry on), padded with the cell itself."""
    members = np.repeat(np.asarray(rows, dtype=np.int64)[:, None], width, axis=1)
    for j, r in enumerate(rows):
        nbrs = indices[indptr[r - first_row] : indptr[r - first_row + 1]]
        members[j, 1 : 1 + nbrs.size] = nbrs
    return members


def nearest_to_median(members: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each row of ``members`` (rows x width) with their ``points`` (rows x width x
    dims), the member nearest to the members' median position."""
    centre = np.median(points, axis=1)
    dist = ((points - centre[:, None, :]) ** 2).sum(axis=2)
    return members[np.arange(members.shape[0]), dist.argmin(axis=1)]


def draw_cells(n_kept: int, prop: float, seed: int, most: int | None = None) -> np.ndarray:
    """``prop`` of ``n_kept`` rows (at most ``most``) drawn at random (seeded),
    ascending: the cells refined sampling starts from."""
    n = max(1, round(prop * n_kept))
    if most is not None:
        n = min(n, most)
    return np.sort(np.random.default_rng(seed).choice(np.arange(n_kept), size=n, replace=False))


def sample_index_cells(
    x: np.ndarray,
    graph: sp.csr_matrix,
    kept: np.ndarray,
    prop: float,
    seed: int,
    most: int | None = None,
) -> np.ndarray:
    """``prop`` of the ``kept`` rows (at most ``most``) drawn at random (seeded), refined
    (`refined_index_cells`)."""
    kept = np.asarray(kept, dtype=np.int64)
    return refined_index_cells(x, graph, kept[draw_cells(kept.size, prop, seed, most)])


def membership_matrix(members: np.ndarray, n_cells: int) -> sp.csc_matrix:
    """cells x neighbourhoods (0/1, CSC) from the members' rows (neighbourhoods x k)."""
    m, k = members.shape
    data = np.ones(m * k, dtype=np.uint8)
    indptr = np.arange(0, m * k + 1, k, dtype=np.int64)
    indices = np.sort(members, axis=1).ravel()  # a copy in the members' own integer type
    return sp.csc_matrix((data, indices, indptr), shape=(n_cells, m))


def sample_counts(members: np.ndarray, sample_codes: np.ndarray, n_samples: int) -> np.ndarray:
    """Cells of each sample in each neighbourhood (neighbourhoods x samples, int64);
    ``sample_codes`` gives every cell's sample (0..n_samples-1)."""
    m = members.shape[0]
    codes = sample_codes[members] + n_samples * np.arange(m)[:, None]
    return np.bincount(codes.ravel(), minlength=m * n_samples).reshape(m, n_samples)


def majority_labels(
    members: np.ndarray, label_codes: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each neighbourhood's most common label code and its share of the members; codes
    < 0 (no label) count in the share's denominator but are never the majority (a
    neighbourhood with no labelled member gets -1 and share 0)."""
    m, k = members.shape
    codes = label_codes[members]
    ok = codes >= 0
    flat = (codes + n_labels * np.arange(m)[:, None])[ok]
    tally = np.bincount(flat, minlength=m * n_labels).reshape(m, n_labels)
    best = tally.argmax(axis=1)
    share = tally[np.arange(m), best] / k
    best[tally.sum(axis=1) == 0] = -1
    return best, np.where(best >= 0, share, 0.0)


def spatial_fdr(pvalues: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Milo's spatial FDR: a weighted Benjamini-Hochberg in which each neighbourhood
    counts by its weight (1 / the distance from its index cell to its k-th neighbour,
    miloR's default "k-distance"), so that overlapping neighbourhoods in dense regions
    do not count as many independent tests. NaN p-values stay NaN and take no weight."""
    p = np.asarray(pvalues, dtype=float)
    w = np.asarray(weights, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p) & np.isfinite(w))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ws = w[order]
    with np.errstate(divide="ignore", invalid="ignore"):
        adjusted = np.nan_to_num(ws.sum() * p[order] / np.cumsum(ws), nan=np.inf)
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    out[order] = np.minimum(adjusted, 1.0)
    return out


def members_within(
    index_points: np.ndarray, kth_distance: np.ndarray, queries: np.ndarray, *, n_search: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which neighbourhoods new cells fall into: query cell q is in neighbourhood i when it
    is no farther from i's index cell than i's own k-th member (it would have been one of
    its k nearest). Searches each query's ``n_search`` nearest index cells (exact);
    returns (query rows, neighbourhoods) pairs."""
    import faiss

    index = faiss.IndexFlatL2(index_points.shape[1])
    index.add(np.ascontiguousarray(index_points, dtype=np.float32))
    n_search = min(n_search, index_points.shape[0])
    squared, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), n_search)
    distance = np.sqrt(np.maximum(squared, 0))
    inside = (found >= 0) & (distance <= kth_distance[np.maximum(found, 0)])
    rows, cols = np.nonzero(inside)
    return rows, found[rows, cols]
