"""New cells in an existing graph: their nearest reference cells, graph edges, clusters
and UMAP positions, without changing the reference's (no I/O).

Neighbours are exact (faiss `IndexFlatL2`, BLAS): 45,000 new cells against 976,000
reference cells x 50 dims take ~42 s on 2 cores, and nothing about the reference needs
to be stored besides its embedding. Edge weights are umap-learn's membership strengths
(what `umap.UMAP.transform` uses for new points); clusters are the weighted majority of
the neighbours' clusters; positions are the weighted mean of the neighbours' (the rule
the graph stage uses for the cells it did not fit UMAP on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..runtime import umap_module


@dataclass(frozen=True)
class QueryNeighbors:
    indices: np.ndarray  # query cells x k, int64: rows of the reference
    distances: np.ndarray  # query cells x k, float32 euclidean, ascending
    weights: np.ndarray  # query cells x k, float32: umap membership strengths


def query_neighbors(reference: np.ndarray, query: np.ndarray, k: int) -> QueryNeighbors:
    """The ``k`` nearest reference cells of every query cell (exact, euclidean)."""
    import faiss

    smooth_knn_dist = umap_module().smooth_knn_dist

    ref = np.ascontiguousarray(reference, dtype=np.float32)
    q = np.ascontiguousarray(query, dtype=np.float32)
    if ref.shape[1] != q.shape[1]:
        msg = f"reference has {ref.shape[1]} dimensions, query {q.shape[1]}"
        raise ValueError(msg)
    if k > ref.shape[0]:
        msg = f"asked for {k} neighbours among {ref.shape[0]} reference cells"
        raise ValueError(msg)
    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(ref)
    squared, indices = index.search(q, k)
    distances = np.sqrt(np.maximum(squared, 0)).astype(np.float32)
    # umap's transform: local connectivity 1, bandwidth so that the weights sum to log2(k)
    sigmas, rhos = smooth_knn_dist(distances, float(k), local_connectivity=1.0)
    weights = np.exp(-np.maximum(distances - rhos[:, None], 0) / sigmas[:, None])
    return QueryNeighbors(
        np.asarray(indices, dtype=np.int64), distances, weights.astype(np.float32)
    )


def query_edges(nn: QueryNeighbors, n_reference: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(distances, connectivities) from each query cell to its reference neighbours
    (query cells x reference cells, CSR)."""
    n, k = nn.indices.shape
    rows = np.repeat(np.arange(n), k)
    shape = (n, n_reference)
    cols = nn.indices.ravel()
    distances = sp.csr_matrix((nn.distances.ravel(), (rows, cols)), shape=shape)
    connectivities = sp.csr_matrix((nn.weights.ravel(), (rows, cols)), shape=shape)
    return distances, connectivities


def vote_clusters(reference_labels: np.ndarray, nn: QueryNeighbors) -> np.ndarray:
    """Each query cell's cluster: the one with the largest summed edge weight among its
    neighbours (``reference_labels`` integer codes, -1 ignored; ties: the lower code)."""
    labels = np.asarray(reference_labels)[nn.indices]
    n_labels = int(max(labels.max(initial=-1), 0)) + 1
    votes = np.zeros((labels.shape[0], n_labels))
    ok = labels >= 0
    rows = np.broadcast_to(np.arange(labels.shape[0])[:, None], labels.shape)
    np.add.at(votes, (rows[ok], labels[ok]), nn.weights[ok])
    out = votes.argmax(axis=1)
    out[~ok.any(axis=1)] = -1
    return out


def place_query(reference_layout: np.ndarray, nn: QueryNeighbors) -> np.ndarray:
    """Query cells' 2-D positions: the mean of their neighbours', weighted by
    1 / (distance + the nearest neighbour's distance), as `place_by_neighbors` does."""
    coords = np.asarray(reference_layout, dtype=np.float64)[nn.indices]  # n x k x 2
    ok = ~np.isnan(coords[..., 0])
    dist = np.where(ok, nn.distances, np.inf)
    nearest = dist.min(axis=1, keepdims=True)
    weights = np.where(ok, 1.0 / (dist + nearest + 1e-6), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    out = np.einsum("nk,nkd->nd", weights / np.where(total > 0, total, 1.0), np.nan_to_num(coords))
    out[total[:, 0] == 0] = np.nan
    return out.astype(np.float32)
