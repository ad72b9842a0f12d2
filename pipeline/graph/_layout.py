"""Leiden clusters and the UMAP layout from a kNN graph (igraph, umap-learn; no I/O)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..runtime import umap_module


def leiden_clusters(
    connectivities: sp.csr_matrix,
    *,
    resolutions: tuple[float, ...],
    seed: int = 0,
    n_iterations: int = 2,
) -> dict[float, np.ndarray]:
    """Leiden clusters (igraph, modularity with weights) at each resolution, numbered by
    decreasing size; the igraph graph is built once for all resolutions."""
    import random

    import igraph as ig

    upper = sp.triu(connectivities, k=1).tocoo()
    # edges as int64, igraph's integer: from int32 python-igraph converted element by
    # element, which in a thread (a Dask worker's task) peaked 1.7 GiB above the graph at
    # 855k cells (0.25 GiB with int64; add_edges 5 s instead of 10 s for the constructor)
    graph = ig.Graph(n=connectivities.shape[0])
    graph.add_edges(np.column_stack([upper.row, upper.col]).astype(np.int64))
    # weights given as an array, not an edge attribute (which igraph keeps as Python
    # floats: 0.32 GiB more at 855k cells; the same clusters)
    weights = upper.data.astype(np.float64)
    del upper
    out = {}
    for resolution in resolutions:
        ig.set_random_number_generator(random.Random(seed))
        try:
            parts = graph.community_leiden(
                objective_function="modularity",
                weights=weights,
                resolution=resolution,
                n_iterations=n_iterations,
            )
        finally:
            ig.set_random_number_generator(random)
        out[resolution] = by_size(np.asarray(parts.membership))
    return out


def by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster labels (>= 0; -1 stays) renumbered 0, 1, ... by decreasing size (ties: the
    lower label first)."""
    labelled = labels >= 0
    sizes = np.bincount(labels[labelled])
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(sizes.size)
    out = np.full(labels.shape, -1, dtype=np.int64)
    out[labelled] = rank[labels[labelled]]
    return out


def transfer_by_neighbors(
    labels: np.ndarray,
    indices: np.ndarray,
    distances: np.ndarray,
    *,
    max_rounds: int = 50,
    chunk_cells: int = 100_000,
) -> np.ndarray:
    """Fill the -1 entries of ``labels`` from the kNN graph (``indices``/``distances`` of
    every cell): each unlabelled cell with labelled neighbours takes their most common
    label, votes weighted as in `place_by_neighbors`; repeated outward (all cells of a
    round at once) until all are labelled (cells whose component has no labelled cell
    stay -1)."""
    out = np.asarray(labels, dtype=np.int64).copy()
    n_labels = int(out.max()) + 1
    for _ in range(max_rounds):
        todo = np.flatnonzero(out < 0)
        if todo.size == 0 or n_labels == 0:
            break
        filled = np.full(todo.size, -1, dtype=np.int64)
        for start in range(0, todo.size, chunk_cells):
            rows = todo[start : start + chunk_cells]
            filled[start : start + rows.size] = vote_round(
                out, n_labels, indices[rows], distances[rows]
            )
        if (filled < 0).all():
            break
        out[todo] = filled
    return out


def vote_round(
    labels: np.ndarray, n_labels: int, indices: np.ndarray, distances: np.ndarray
) -> np.ndarray:
    """One round of `transfer_by_neighbors` for the cells whose kNN rows are ``indices`` /
    ``distances``: the label each takes from its labelled neighbours (-1: none)."""
    k = indices.shape[1] - 1
    nbr = indices[:, 1:]
    lab = np.where(nbr >= 0, labels[np.maximum(nbr, 0)], -1)
    ok = lab >= 0
    dist = np.where(ok, distances[:, 1:], np.inf)
    with np.errstate(invalid="ignore"):
        weight = np.where(ok, 1.0 / (dist + dist.min(axis=1, keepdims=True) + 1e-6), 0.0)
    n = indices.shape[0]
    slot = np.repeat(np.arange(n), k) * n_labels + np.maximum(lab, 0).ravel()
    votes = np.bincount(slot, weights=weight.ravel(), minlength=n * n_labels)
    votes = votes.reshape(n, n_labels)
    return np.where(ok.any(axis=1), votes.argmax(axis=1), -1)


def umap_layout(
    connectivities: sp.csr_matrix,
    init_points: np.ndarray,
    *,
    seed: int = 0,
    n_epochs: int | None = None,
) -> np.ndarray:
    """umap-learn's layout of a fuzzy simplicial set (what scanpy's `tl.umap` runs), with
    its defaults (min_dist 0.5, spread 1, spectral initialisation), on one thread.

    BLAS runs on one thread too: the spectral initialisation's eigensolver sums in an
    order that depends on BLAS's thread count, and the layout's optimisation turns those
    last-digit differences into another picture, so a driver started with
    ``OMP_NUM_THREADS=1`` (a SLURM job, or a process started beside a LocalCluster) drew
    another UMAP of the same graph. With one BLAS thread the layout depends on the inputs
    and the seed only."""
    from threadpoolctl import threadpool_limits

    umap_ = umap_module()
    a, b = umap_.find_ab_params(1.0, 0.5)
    graph = connectivities.tocoo()
    with threadpool_limits(limits=1, user_api="blas"):
        layout, _ = umap_.simplicial_set_embedding(
            init_points,
            graph,
            n_components=2,
            initial_alpha=1.0,
            a=a,
            b=b,
            gamma=1.0,
            negative_sample_rate=5,
            n_epochs=n_epochs or (500 if graph.shape[0] <= 10_000 else 200),
            init="spectral",
            random_state=np.random.RandomState(seed),
            metric="euclidean",
            metric_kwds={},
            densmap=False,
            densmap_kwds={},
            output_dens=False,
        )
    return np.asarray(layout, dtype=np.float32)


def place_by_neighbors(
    layout: np.ndarray, indices: np.ndarray, distances: np.ndarray, *, max_rounds: int = 50
) -> np.ndarray:
    """Fill the NaN rows of ``layout`` from the kNN graph (``indices``/``distances`` of
    every cell): each unplaced cell with placed neighbours goes to their mean, weighted
    by 1 / (distance + the nearest such distance); repeated outward until all are placed
    (cells whose component has no placed cell stay NaN)."""
    out = layout.astype(np.float32, copy=True)
    for _ in range(max_rounds):
        todo = np.flatnonzero(np.isnan(out[:, 0]))
        if todo.size == 0:
            break
        has, coords = place_round(out, indices[todo], distances[todo])
        if not has.any():
            break
        out[todo[has]] = coords
    return out


def place_round(
    layout: np.ndarray, indices: np.ndarray, distances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One round of `place_by_neighbors` for the cells whose kNN rows are ``indices`` /
    ``distances``: which of them have placed neighbours in ``layout`` (NaN: not placed)
    and, for those, their places."""
    nbr = indices[:, 1:]
    placed = ~np.isnan(layout[:, 0])
    ok = (nbr >= 0) & placed[np.maximum(nbr, 0)]
    has = ok.any(axis=1)
    nbr, ok = nbr[has], ok[has]
    dist = np.where(ok, distances[has, 1:], np.inf)
    weights = np.where(ok, 1.0 / (dist + dist.min(axis=1, keepdims=True) + 1e-6), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    coords = np.nan_to_num(layout[np.maximum(nbr, 0)])
    return has, np.einsum("nk,nkd->nd", weights, coords).astype(np.float32)
