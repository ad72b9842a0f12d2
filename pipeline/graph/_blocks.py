"""The graph stage's tasks on blocks of cells: the sharded neighbour search and the kNN
graph built block by block (pure, but for `read_rows`, which reads rows of a store).

A block is a range of the kept cells' positions ``start:stop``. Every query block
searches every block's points ("shards") in a chain of tasks that keeps the nearest ``k``
so far, each step reading its shard from the store (`search_stored`; `search_shard` for
points already in memory). With an inverted-file index the lists
each query probes are found once per query block (`coarse_block`) and each shard is
searched with them (faiss ``search_preassigned``): the same candidates, hence the same
neighbours, as the one index `pipeline.graph.knn_index` builds over all cells. The fuzzy
union of the UMAP connectivities needs the transpose of the membership strengths: each
block sends the entries of its rows to the blocks that own their columns
(`transpose_parts`), and each block sums its own rows with what it receives
(`union_block`), entry by entry the arithmetic of `knn_graphs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..runtime import umap_module
from ..store import read_rows
from ._knn import NPROBE, distance_rows, self_first


@dataclass(frozen=True)
class Coarse:
    """A block's cells against the inverted lists' centroids."""

    lists: np.ndarray  # the list each cell is added to (int64)
    probes: np.ndarray  # cells x NPROBE: the lists each cell searches, nearest first
    probe_distances: np.ndarray  # float32, squared


def coarse_block(
    points: np.ndarray, centroids: np.ndarray | None, probes: bool = True
) -> Coarse | None:
    """The block's lists and, with ``probes``, the lists its cells search (None for exact
    search)."""
    if centroids is None:
        return None
    import faiss

    quantizer = faiss.IndexFlatL2(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, found = quantizer.search(points, min(NPROBE, centroids.shape[0]) if probes else 1)
    lists = found[:, 0].copy()  # each cell is added to its nearest list
    if not probes:
        return Coarse(lists, found[:, :0], distances[:, :0])
    return Coarse(lists, found, distances)


def coarse_stored(
    store: str,
    element: str,
    kept: np.ndarray,
    bounds: tuple[int, int],
    centroids: np.ndarray | None,
    probes: bool = True,
) -> Coarse | None:
    """`coarse_block` of the block ``bounds`` (positions among the ``kept`` cells, whose
    rows of ``element`` it reads from ``store``)."""
    a, b = bounds
    return coarse_block(read_rows(store, element, kept[a:b]), centroids, probes)


Found = tuple[np.ndarray, np.ndarray]  # (ids int64, squared distances float32), queries x k


def _nearest(found: Found, k: int) -> Found:
    ids, squared = found
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(squared, order, axis=1)


def search_shard(
    queries: np.ndarray,
    coarse: Coarse | None,
    points: np.ndarray,
    shard: Coarse | None,
    start: int,
    centroids: np.ndarray | None,
    k: int,
    previous: Found | None,
) -> Found:
    """The ``k`` nearest of ``queries`` among ``previous`` (the shards searched so far)
    and the shard ``points`` (positions ``start``..): exactly with ``centroids`` None,
    else in the lists ``coarse.probes`` (``shard.lists``: the shard's cells' lists).
    Missing neighbours are id -1 at an infinite distance."""
    import faiss

    n, dims = points.shape
    index: Any
    if centroids is None:
        index = faiss.IndexFlatL2(dims)
        index.add(points)
        squared, found = index.search(queries, min(k, n))
        found = np.where(found >= 0, found + start, -1)
    else:
        assert coarse is not None and shard is not None
        quantizer = faiss.IndexFlatL2(dims)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        index = faiss.IndexIVFFlat(quantizer, dims, centroids.shape[0])
        index.is_trained = True
        ids = np.arange(start, start + n, dtype=np.int64)
        assigned = np.ascontiguousarray(shard.lists, dtype=np.int64)
        index.add_core(n, faiss.swig_ptr(points), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))
        index.nprobe = coarse.probes.shape[1]
        squared, found = index.search_preassigned(
            queries, min(k, n), coarse.probes, coarse.probe_distances
        )
    squared = np.where(found >= 0, squared, np.inf).astype(np.float32)
    if previous is not None:
        found = np.concatenate([previous[0], found], axis=1)
        squared = np.concatenate([previous[1], squared], axis=1)
    if found.shape[1] < k:
        pad = k - found.shape[1]
        found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
        squared = np.pad(squared, ((0, 0), (0, pad)), constant_values=np.inf)
    return _nearest((found, squared), k)


def search_stored(
    queries: np.ndarray,
    coarse: Coarse | None,
    store: str,
    element: str,
    kept: np.ndarray,
    bounds: tuple[int, int],
    shard: Coarse | None,
    centroids: np.ndarray | None,
    k: int,
    previous: Found | None,
) -> Found:
    """`search_shard` of the block ``bounds`` (positions among the ``kept`` cells, whose
    rows of ``element`` it reads from ``store``)."""
    a, b = bounds
    points = read_rows(store, element, kept[a:b])
    return search_shard(queries, coarse, points, shard, a, centroids, k, previous)


def short_rows(found: Found) -> np.ndarray:
    """Queries with fewer than ``k`` neighbours found (their probed lists hold fewer)."""
    return np.flatnonzero((found[0] < 0).any(axis=1))


def replace_rows(found: Found, rows: np.ndarray, exact: Found) -> Found:
    ids, squared = found[0].copy(), found[1].copy()
    ids[rows], squared[rows] = exact
    return ids, squared


@dataclass(frozen=True)
class BlockNeighbors:
    """A block's kNN rows: positions among the kept cells, each cell itself first."""

    start: int
    indices: np.ndarray  # int64
    distances: np.ndarray  # float32, euclidean


def finish_block(found: Found, start: int) -> BlockNeighbors:
    """Euclidean distances, each cell first in its own row (as `nearest_neighbors`)."""
    indices = found[0].copy()
    distances = np.sqrt(np.maximum(found[1], 0)).astype(np.float32)
    distances[indices < 0] = np.inf
    self_first(indices, distances, own=np.arange(start, start + indices.shape[0]))
    return BlockNeighbors(start, indices, distances)


def distance_sum(nn: BlockNeighbors) -> tuple[float, int]:
    """The sum and number of the block's kNN distances (self included, as umap-learn's
    `smooth_knn_dist` averages them; missing neighbours left out)."""
    ok = nn.indices >= 0
    return float(nn.distances[ok].astype(np.float64).sum()), int(ok.sum())


@dataclass(frozen=True)
class BlockGraph:
    """A block's rows of the distances and of the membership strengths (kept positions)."""

    start: int
    distances: sp.csr_matrix  # block rows x kept cells
    strengths: sp.csr_matrix


def graph_block(nn: BlockNeighbors, n_kept: int, mean_distance: float) -> BlockGraph:
    """The block's rows of `knn_graphs`' distances and of umap-learn's membership
    strengths, with the mean of all blocks' kNN distances (``mean_distance``: the floor
    of sigma for a cell whose neighbours are all at distance 0)."""
    umap_ = umap_module()
    compute_membership_strengths, smooth_knn_dist = (
        umap_.compute_membership_strengths,
        umap_.smooth_knn_dist,
    )
    MIN_K_DIST_SCALE = umap_.MIN_K_DIST_SCALE
    rows, k = nn.indices.shape
    distances = distance_rows(nn.indices, nn.distances, n_kept)
    knn_dists = np.where(nn.indices >= 0, nn.distances, 0).astype(np.float32)
    sigmas, rhos = smooth_knn_dist(knn_dists, float(k), local_connectivity=1.0)
    alone = np.flatnonzero(rhos == 0)  # all distances 0: the floor is the global mean
    if alone.size:
        own, _ = smooth_knn_dist(knn_dists[alone], float(k), local_connectivity=1.0)
        sigmas[alone] = np.maximum(own, MIN_K_DIST_SCALE * mean_distance)
    # bipartite: the rows are a block, so "self" is column start + row, not row
    r, c, vals, _ = compute_membership_strengths(nn.indices, knn_dists, sigmas, rhos, False, True)
    vals[(c == r + nn.start) | (nn.indices.ravel() < 0)] = 0
    strengths = sp.csr_matrix((vals, (r, c)), shape=(rows, n_kept))
    strengths.eliminate_zeros()
    return BlockGraph(nn.start, distances, strengths)


def transpose_parts(
    block: BlockGraph, bounds: list[tuple[int, int]]
) -> list[tuple[np.ndarray, ...]]:
    """The block's strengths as entries of the transpose, one part per block of
    ``bounds``: (row within that block, column, value) for the columns it owns."""
    coo = block.strengths.tocoo()
    parts: list[tuple[np.ndarray, ...]] = []
    for a, b in bounds:
        mine = (coo.col >= a) & (coo.col < b)
        parts.append((coo.col[mine] - a, coo.row[mine] + block.start, coo.data[mine]))
    return parts


def union_block(block: BlockGraph, parts: list[tuple[np.ndarray, ...]]) -> sp.csr_matrix:
    """The block's rows of the connectivities: W + W' - W o W' (float32, as `knn_graphs`)."""
    strengths = block.strengths
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    vals = np.concatenate([p[2] for p in parts])
    transpose = sp.csr_matrix((vals, (rows, cols)), shape=strengths.shape)
    both = strengths.multiply(transpose)
    union = strengths + transpose
    del transpose
    union = union - both
    union.eliminate_zeros()
    return sp.csr_matrix(union, dtype=np.float32)


def cohort_rows(
    m: sp.csr_matrix, kept: np.ndarray, first: int, last: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's rows (kept positions) as the cohort rows ``first:last`` of a cells x
    cells matrix (``kept``: the cohort row of every kept position; rows not kept are
    empty): (row lengths int64, column indices int32, values)."""
    lengths = np.zeros(last - first, dtype=np.int64)
    own = kept[np.searchsorted(kept, first) : np.searchsorted(kept, last)]
    lengths[own - first] = np.diff(m.indptr)
    return lengths, kept[m.indices].astype(np.int32), m.data


PART_NAMES = ("lengths", "indices", "data")


def write_cohort_rows(m: sp.csr_matrix, kept: np.ndarray, first: int, last: int, path: str) -> int:
    """`cohort_rows` saved as ``{path}-lengths.npy``, ``-indices.npy`` and ``-data.npy``
    (read back by `read_part` when the matrix is written): the worker then holds
    nothing of the block's rows until the stage writes the graph. The number of
    entries."""
    parts = cohort_rows(m, kept, first, last)
    for name, a in zip(PART_NAMES, parts, strict=True):
        np.save(f"{path}-{name}.npy", a)
    return int(parts[1].size)


def read_part(path: str, j: int) -> np.ndarray:
    """Part ``j`` (of `PART_NAMES`) that `write_cohort_rows` saved at ``path``, mapped
    from the file (pages read as the writing tasks take them)."""
    return np.load(f"{path}-{PART_NAMES[j]}.npy", mmap_mode="r")


def indptr_part(lengths: np.ndarray, offset: int, first: bool, dtype: Any) -> np.ndarray:
    """The block's part of the indptr: entries after ``offset`` (the nnz of the blocks
    before it); the first block also carries the leading 0."""
    ends = offset + np.cumsum(lengths)
    return (np.concatenate([[offset], ends]) if first else ends).astype(dtype)


def place_block(nn: BlockNeighbors, layout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One round of `place_by_neighbors` for the block's unplaced cells: (positions among
    the kept cells, places) of those with placed neighbours."""
    from ._layout import place_round

    todo = np.flatnonzero(np.isnan(layout[nn.start : nn.start + nn.indices.shape[0], 0]))
    has, coords = place_round(layout, nn.indices[todo], nn.distances[todo])
    return todo[has] + nn.start, coords


def vote_block(
    nn: BlockNeighbors, labels: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """One round of `transfer_by_neighbors` for the block's unlabelled cells: (positions,
    labels; -1 where none of the neighbours is labelled)."""
    from ._layout import vote_round

    todo = np.flatnonzero(labels[nn.start : nn.start + nn.indices.shape[0]] < 0)
    return todo + nn.start, vote_round(labels, n_labels, nn.indices[todo], nn.distances[todo])
