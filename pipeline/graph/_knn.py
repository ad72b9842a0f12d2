"""k-nearest neighbours of an embedding and their UMAP connectivities (no I/O).

Exact search (faiss `IndexFlatL2`, BLAS) below ``exact_knn_below`` cells; above it faiss's
inverted-file index (`IndexIVFFlat`: k-means cells into ~2 sqrt(n) lists, seeded; each
cell searches the `NPROBE` lists nearest to it), queried ``chunk_cells`` at a time.
Connectivities are umap-learn's fuzzy simplicial set, as scanpy computes them (method
"umap").

Measured on the benchmark cohorts' Harmony embeddings (50 dims, 2 cores; recall@15
against exact search on 2,000 cells; peak above the embedding):
- 212k cells: IVF 1,024 lists 5.1 s, recall 0.75, +0.13 GiB; pynndescent (scanpy's
  search, 20 candidates, 8 trees) 24.7 s, recall 0.75.
- 855k cells: IVF 2,048 lists 43 s, recall 0.73, +0.33 GiB; pynndescent 72 s, recall
  0.66, +1.5 GiB (its defaults: 3.7 GiB more, the same recall). faiss HNSW did not finish
  its single-threaded build in 7 minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..runtime import umap_module


@dataclass(frozen=True)
class Neighbors:
    indices: np.ndarray  # cells x k, int64; column 0 is the cell itself
    distances: np.ndarray  # cells x k, float32 euclidean; column 0 is 0
    exact: bool


NPROBE = 16  # inverted lists each cell searches


def nearest_neighbors(
    x: np.ndarray,
    k: int,
    *,
    exact_knn_below: int = 50_000,
    seed: int = 0,
    chunk_cells: int = 50_000,
) -> Neighbors:
    """The ``k`` nearest cells of every cell (itself first), euclidean; faiss searches on
    every core this process may use (the same result with the same number of cores)."""
    points = np.ascontiguousarray(x, dtype=np.float32)
    n = points.shape[0]
    if k > n:
        msg = f"asked for {k} neighbours of {n} cells"
        raise ValueError(msg)
    index, exact = knn_index(points, exact_knn_below=exact_knn_below, seed=seed)
    indices, distances = _search(index, points, k, chunk_cells)
    del index
    self_first(indices, distances)
    return Neighbors(indices=indices, distances=distances, exact=exact)


def knn_index(points: np.ndarray, *, exact_knn_below: int = 50_000, seed: int = 0):
    """The faiss index `nearest_neighbors` searches (exact below ``exact_knn_below`` rows,
    a seeded inverted-file index above), holding ``points`` (contiguous float32); and
    whether it is exact."""
    from ..runtime import faiss_all_cores

    faiss = faiss_all_cores()
    n, dim = points.shape
    exact = n < exact_knn_below
    if exact:
        index = faiss.IndexFlatL2(dim)
    else:
        index = _trained_ivf(points[ivf_training_rows(n, seed)], n_lists_for(n), seed)
    index.add(points)
    return index, exact


def n_lists_for(n: int) -> int:
    """The inverted lists of `knn_index` over ``n`` cells: ~2 sqrt(n), a power of 2."""
    return int(2 ** round(np.log2(2 * np.sqrt(n))))


def ivf_training_rows(n: int, seed: int) -> np.ndarray:
    """The rows (of ``n``, ascending, seeded) `knn_index` trains its lists on."""
    n_lists = n_lists_for(n)
    return np.sort(np.random.default_rng(seed).choice(n, min(n, 50 * n_lists), replace=False))


def _trained_ivf(train: np.ndarray, n_lists: int, seed: int) -> Any:
    import faiss

    dim = train.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, n_lists)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.nprobe = NPROBE
    return index


def ivf_centroids(train: np.ndarray, n_lists: int, seed: int) -> np.ndarray:
    """The list centroids (n_lists x dims, float32) `knn_index` trains on ``train`` (its
    `ivf_training_rows`): with them a shard of the cells can be indexed and searched on
    its own (`pipeline.graph.Shards`)."""
    index = _trained_ivf(train, n_lists, seed)
    return np.asarray(index.quantizer.reconstruct_n(0, n_lists), dtype=np.float32)


SEARCH_CHUNK_ENTRIES = 5_000_000  # queries x k per search call: bounds faiss's own results


def _search(index, queries: np.ndarray, k: int, chunk_cells: int):
    n = queries.shape[0]
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    # the graph's k (15): chunk_cells queries per call; a neighbourhood's k (hundreds):
    # fewer, so that the call's own int64 + float32 results stay ~60 MB
    chunk_cells = max(1, min(chunk_cells, SEARCH_CHUNK_ENTRIES // k))
    for start in range(0, n, chunk_cells):
        squared, found = index.search(queries[start : start + chunk_cells], k)
        indices[start : start + len(found)] = found
        distances[start : start + len(found)] = np.sqrt(np.maximum(squared, 0))
    return indices, distances


def neighbours_of(
    x: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    exact_knn_below: int = 50_000,
    seed: int = 0,
    chunk_cells: int = 50_000,
) -> Neighbors:
    """The ``k`` nearest cells of the cells ``rows`` of ``x`` (each itself first), found
    with the index `nearest_neighbors` builds for all of ``x``: with the same ``k`` the
    rows of its result."""
    rows = np.asarray(rows)
    (found,) = neighbour_blocks(x, rows, k, block=max(1, rows.size),
                                exact_knn_below=exact_knn_below, seed=seed,
                                chunk_cells=chunk_cells)  # fmt: skip
    return found


def neighbour_blocks(
    x: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    block: int,
    exact_knn_below: int = 50_000,
    seed: int = 0,
    chunk_cells: int = 50_000,
) -> Iterator[Neighbors]:
    """`neighbours_of` for ``block`` of the ``rows`` at a time, with one index: the
    same neighbours, without all rows x ``k`` results held at once."""
    points = np.ascontiguousarray(x, dtype=np.float32)
    if k > points.shape[0]:
        msg = f"asked for {k} neighbours of {points.shape[0]} cells"
        raise ValueError(msg)
    index, exact = knn_index(points, exact_knn_below=exact_knn_below, seed=seed)
    rows = np.asarray(rows)
    for start in range(0, max(rows.size, 1), block):
        part = rows[start : start + block]
        queries = points[part]
        indices, distances = _search(index, queries, k, chunk_cells)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if short.size:  # the lists they probed hold fewer than k cells: exact search for them
            flat, _ = knn_index(points, exact_knn_below=points.shape[0] + 1)
            indices[short], distances[short] = _search(flat, queries[short], k, chunk_cells)
            del flat
        self_first(indices, distances, own=np.asarray(part, dtype=np.int64))
        yield Neighbors(indices=indices, distances=distances, exact=exact)


def self_first(indices: np.ndarray, distances: np.ndarray, own: np.ndarray | None = None) -> None:
    """Put each cell (row r: cell ``own[r]``, default r) in column 0 (a tie with a
    duplicate cell may displace it) at distance 0, in place. (Exact search computes
    |x|^2 + |y|^2 - 2 x.y with BLAS: a cell's distance to itself can come out as 1e-3
    instead of 0, which UMAP's connectivities then take for the nearest neighbour's.)"""
    own = np.arange(indices.shape[0]) if own is None else own
    distances[indices[:, 0] == own, 0] = 0.0
    for r in np.flatnonzero(indices[:, 0] != own):
        others = indices[r] != own[r]
        keep_idx = indices[r][others][: indices.shape[1] - 1]
        keep_dist = distances[r][others][: indices.shape[1] - 1]
        indices[r, 0], distances[r, 0] = own[r], 0.0
        indices[r, 1 : 1 + keep_idx.size] = keep_idx
        distances[r, 1 : 1 + keep_dist.size] = keep_dist


def distance_rows(indices: np.ndarray, distances: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """kNN rows (each cell first, missing neighbours -1) as scanpy's obsp distances: CSR
    rows x ``n_cols``, self and missing neighbours left out, columns sorted."""
    cols = indices[:, 1:]
    ok = cols >= 0
    indptr = np.concatenate([[0], np.cumsum(ok.sum(axis=1))])
    out = sp.csr_matrix(
        (distances[:, 1:][ok], cols[ok].astype(np.int32), indptr), shape=(len(indices), n_cols)
    )
    out.sort_indices()
    return out


def knn_graphs(nn: Neighbors, *, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(distances, connectivities) as scanpy stores them in obsp (self excluded).

    The connectivities are umap-learn's `fuzzy_simplicial_set` (its membership strengths,
    then the fuzzy union W + W' - W o W'), computed here with fewer temporaries: at 855k
    cells umap-learn's own function peaked 0.7 GiB above its result. ``seed`` is unused
    (the computation is deterministic); kept for the callers.
    """
    umap_ = umap_module()
    compute_membership_strengths, smooth_knn_dist = (
        umap_.compute_membership_strengths,
        umap_.smooth_knn_dist,
    )
    del seed
    n, k = nn.indices.shape
    distances = distance_rows(nn.indices, nn.distances, n)

    knn_dists = np.asarray(nn.distances, dtype=np.float32)
    sigmas, rhos = smooth_knn_dist(knn_dists, float(k), local_connectivity=1.0)
    rows, cols_, vals, _ = compute_membership_strengths(nn.indices, knn_dists, sigmas, rhos)
    strength = sp.csr_matrix((vals, (rows, cols_)), shape=(n, n))
    del rows, cols_, vals
    strength.eliminate_zeros()
    transpose = strength.T.tocsr()
    both = strength.multiply(transpose)
    union = strength + transpose
    del strength, transpose
    union = union - both
    del both
    union.eliminate_zeros()
    return distances, sp.csr_matrix(union, dtype=np.float32)
