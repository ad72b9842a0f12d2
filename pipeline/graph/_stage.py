"""The graph stage: kNN graph, Leiden clusters and UMAP of the integrated embedding."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import GraphConfig
from ..sampling import stratified_sample
from ..store import read_array_rows
from ._knn import Neighbors, knn_graphs, nearest_neighbors
from ._layout import (
    by_size,
    leiden_clusters,
    place_by_neighbors,
    transfer_by_neighbors,
    umap_layout,
)


@dataclass(frozen=True)
class GraphResult:
    distances: sp.csr_matrix  # cells x cells (all cells; rows of cells not kept are empty)
    connectivities: sp.csr_matrix
    clusters: dict[float, np.ndarray]  # resolution -> cluster per cell (-1: not kept)
    umap: np.ndarray  # cells x 2 (NaN: not kept)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _expand(m: sp.csr_matrix, rows: np.ndarray, n: int) -> sp.csr_matrix:
    """A kept-cells x kept-cells matrix as all cells x all cells (``rows`` ascending),
    sharing ``m``'s values."""
    counts = np.zeros(n, dtype=np.int64)
    counts[rows] = np.diff(m.indptr)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((m.data, rows.astype(np.int32)[m.indices], indptr), shape=(n, n))


def timed_leiden(
    connectivities: sp.csr_matrix, resolutions: tuple[float, ...], seed: int
) -> tuple[dict[float, np.ndarray], float]:
    """`leiden_clusters` and its duration (for running it in another process)."""
    t = time.perf_counter()
    clusters = leiden_clusters(connectivities, resolutions=resolutions, seed=seed)
    return clusters, time.perf_counter() - t


def all_cells(
    kept_clusters: dict[float, np.ndarray], rows: np.ndarray, n: int, sketch: np.ndarray | None
) -> tuple[dict[float, np.ndarray], dict[str, Any]]:
    """The kept cells' clusters as clusters of all ``n`` cells (-1: not kept), and the
    record of how Leiden was fitted (on all kept cells or on the ``sketch``)."""
    clusters = {}
    for r, kept_labels in kept_clusters.items():
        labels = np.full(n, -1, dtype=np.int64)
        labels[rows] = kept_labels
        clusters[r] = labels
    if sketch is None:
        return clusters, {"fitted_on": "all cells", "n_fitted": int(rows.size)}
    return clusters, {
        "fitted_on": "a subsample stratified by sample (its own kNN graph); every other "
        "cell given the cluster most of its neighbours in the kNN graph have",
        "n_fitted": int(sketch.size),
    }


def _kept_rows(embedding: Any, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` of a numpy or zarr array as contiguous float32 (from a zarr array
    without reading the other rows)."""
    if isinstance(embedding, np.ndarray):
        return np.ascontiguousarray(embedding[rows], dtype=np.float32)
    return read_array_rows(embedding, rows, dtype=np.float32)


def build_graph(
    embedding: Any,
    keep: np.ndarray,
    sample: np.ndarray,
    *,
    params: GraphConfig,
    submit: Callable[..., Any] | None = None,
) -> GraphResult:
    """kNN graph, Leiden at each resolution and UMAP of the cells in ``keep``, with the
    graph section's ``params``.

    ``embedding``: cells x dimensions, a numpy array or a zarr array (only the kept
    cells' rows are read).

    Above ``params.umap_max_cells`` kept cells the UMAP is fitted on a subsample stratified by
    ``sample`` (on its own kNN graph) and every other cell is placed from its neighbours in
    the full graph (`place_by_neighbors`); ``info["umap"]`` says which. Likewise above
    ``params.leiden_max_cells`` Leiden runs on a subsample's own kNN graph and every other cell
    takes the cluster most of its neighbours have (`transfer_by_neighbors`; a sketch, as
    Seurat v5 clusters large data): Leiden's working memory (igraph's copies of the graph,
    1.3 GiB at 855k cells) then does not grow with the cohort. ``info["leiden"]``.
    When both are subsampled, the whole cohort's graph is built last, once the UMAP is
    done and the embedding freed, so the two never share the memory.

    ``submit`` (e.g. a Dask client's ``submit``): Leiden runs through it, in another
    process, while this one fits the UMAP (both are single-threaded); its result has a
    ``result()`` method. None: one after the other here. The clusters are the same.
    """
    n_neighbors, seed, exact = params.n_neighbors, params.seed, params.exact_knn_below
    resolutions = tuple(params.resolutions)
    seconds: dict[str, float] = {}
    rows = np.flatnonzero(keep)
    n = len(keep)
    x = _kept_rows(embedding, rows)
    sketch = None
    if rows.size > params.leiden_max_cells:
        sketch = stratified_sample(sample[rows], params.leiden_max_cells, seed + 1)
    fit = None
    if rows.size > params.umap_max_cells:
        fit = stratified_sample(sample[rows], params.umap_max_cells, seed)

    t = time.perf_counter()
    nn = nearest_neighbors(x, n_neighbors, exact_knn_below=exact, seed=seed)
    graphs = None
    if sketch is None or fit is None:  # the whole graph is needed for Leiden or the UMAP
        graphs = knn_graphs(nn, seed=seed)
    seconds["neighbors"] = time.perf_counter() - t

    if sketch is not None:
        t = time.perf_counter()
        sketch_nn = nearest_neighbors(x[sketch], n_neighbors, exact_knn_below=exact, seed=seed)
        _, leiden_graph = knn_graphs(sketch_nn, seed=seed)
        del sketch_nn
        seconds["leiden_neighbors"] = time.perf_counter() - t
    else:
        assert graphs is not None
        leiden_graph = graphs[1]
    leiden = submit(timed_leiden, leiden_graph, resolutions, seed) if submit else None
    if leiden is None:
        kept_clusters, seconds["leiden"] = timed_leiden(leiden_graph, resolutions, seed)
    del leiden_graph

    t = time.perf_counter()
    layout = np.full((n, 2), np.nan, dtype=np.float32)
    if fit is None:
        assert graphs is not None
        layout[rows] = umap_layout(graphs[1], x, seed=seed)
        umap_info: dict[str, Any] = {"fitted_on": "all cells", "n_fitted": int(rows.size)}
    else:
        x_fit = x[fit]
        del x
        sub_nn = nearest_neighbors(x_fit, n_neighbors, exact_knn_below=exact, seed=seed)
        _, sub_conn = knn_graphs(sub_nn, seed=seed)
        del sub_nn
        kept_layout = np.full((rows.size, 2), np.nan, dtype=np.float32)
        kept_layout[fit] = umap_layout(sub_conn, x_fit, seed=seed)
        del sub_conn, x_fit
        layout[rows] = place_by_neighbors(kept_layout, nn.indices, nn.distances)
        umap_info = {
            "fitted_on": "a subsample stratified by sample; every other cell placed at the "
            "distance-weighted mean of its placed neighbours in the kNN graph",
            "n_fitted": int(fit.size),
        }
    seconds["umap"] = time.perf_counter() - t
    if leiden is not None:
        t = time.perf_counter()
        kept_clusters, seconds["leiden"] = leiden.result()
        seconds["leiden_wait"] = time.perf_counter() - t
    if sketch is not None:
        t = time.perf_counter()
        for r, sketch_labels in kept_clusters.items():
            labels = np.full(rows.size, -1, dtype=np.int64)
            labels[sketch] = sketch_labels
            kept_clusters[r] = by_size(transfer_by_neighbors(labels, nn.indices, nn.distances))
        seconds["leiden_transfer"] = time.perf_counter() - t
    clusters, leiden_info = all_cells(kept_clusters, rows, n, sketch)
    if graphs is None:
        t = time.perf_counter()
        graphs = knn_graphs(nn, seed=seed)
        seconds["neighbors"] += time.perf_counter() - t
    info = {
        "neighbors": {"n_neighbors": n_neighbors, "exact": nn.exact},
        "umap": umap_info,
        "leiden": leiden_info,
    }
    del nn
    distances, connectivities = graphs
    del graphs
    return GraphResult(
        distances=_expand(distances, rows, n),
        connectivities=_expand(connectivities, rows, n),
        clusters=clusters,
        umap=layout,
        info=info,
        seconds=seconds,
    )


__all__ = ["GraphResult", "Neighbors", "build_graph", "timed_leiden"]
