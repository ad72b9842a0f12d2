"""Leiden clusters and the UMAP layout from a kNN graph (igraph, umap-learn; no I/O)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
    graph = ig.Graph(n=connectivities.shape[0], edges=np.column_stack([upper.row, upper.col]))
    graph.es["weight"] = upper.data.astype(np.float64)
    del upper
    out = {}
    for resolution in resolutions:
        ig.set_random_number_generator(random.Random(seed))
        try:
            parts = graph.community_leiden(
                objective_function="modularity",
                weights="weight",
                resolution=resolution,
                n_iterations=n_iterations,
            )
        finally:
            ig.set_random_number_generator(random)
        labels = np.asarray(parts.membership)
        sizes = np.bincount(labels)
        rank = np.empty_like(sizes)
        rank[np.argsort(-sizes, kind="stable")] = np.arange(sizes.size)
        out[resolution] = rank[labels]
    return out


def umap_layout(
    connectivities: sp.csr_matrix,
    init_points: np.ndarray,
    *,
    seed: int = 0,
    n_epochs: int | None = None,
) -> np.ndarray:
    """umap-learn's layout of a fuzzy simplicial set (what scanpy's `tl.umap` runs), with
    its defaults (min_dist 0.5, spread 1, spectral initialisation), on one thread."""
    from umap.umap_ import find_ab_params, simplicial_set_embedding

    a, b = find_ab_params(1.0, 0.5)
    graph = connectivities.tocoo()
    layout, _ = simplicial_set_embedding(
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
    placed = ~np.isnan(out[:, 0])
    for _ in range(max_rounds):
        todo = np.flatnonzero(~placed)
        if todo.size == 0:
            break
        nbr = indices[todo, 1:]
        ok = (nbr >= 0) & placed[np.maximum(nbr, 0)]
        has = ok.any(axis=1)
        if not has.any():
            break
        rows, nbr, ok = todo[has], nbr[has], ok[has]
        dist = np.where(ok, distances[rows, 1:], np.inf)
        weights = np.where(ok, 1.0 / (dist + dist.min(axis=1, keepdims=True) + 1e-6), 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        coords = np.nan_to_num(out[np.maximum(nbr, 0)])
        out[rows] = np.einsum("nk,nkd->nd", weights, coords)
        placed[rows] = True
    return out
