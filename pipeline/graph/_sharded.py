"""`build_graph` on a Dask cluster, the cells cut into blocks that the workers read,
search, link and write (tasks in `_blocks.py`), so that the driver holds no per-cell
array but the UMAP's two coordinates and the clusters: the graph stage of a large cohort.

What stays global, in the driver, is bounded by the settings: the inverted lists'
centroids (trained on ``50 x lists`` cells), the UMAP's fit sample
(``graph.umap_max_cells``) and Leiden's sketch (``graph.leiden_max_cells``, clustered on
a worker). The neighbours, distances and connectivities are the same as `build_graph`'s
(tested), and so are the clusters and the layout.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from ..config import GraphConfig
from ..sampling import stratified_sample
from ..store import LazyCSR, read_rows
from ._blocks import (
    BlockNeighbors,
    coarse_block,
    coarse_stored,
    cohort_rows,
    distance_sum,
    finish_block,
    graph_block,
    indptr_part,
    place_block,
    read_part,
    replace_rows,
    search_shard,
    search_stored,
    short_rows,
    transpose_parts,
    union_block,
    vote_block,
    write_cohort_rows,
)
from ._knn import ivf_centroids, ivf_training_rows, knn_graphs, n_lists_for, nearest_neighbors
from ._layout import by_size, umap_layout
from ._stage import all_cells, timed_leiden

BLOCK_CELLS = 200_000  # kept cells per block (~40 MB of a 50-dimensional embedding)


@dataclass(frozen=True)
class ShardedGraph:
    distances: LazyCSR  # cells x cells, written by the workers
    connectivities: LazyCSR
    clusters: dict[float, np.ndarray]  # resolution -> cluster per cell (-1: not kept)
    umap: np.ndarray  # cells x 2 (NaN: not kept)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _take(points: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points[rows])


@dataclass(frozen=True)
class Shards:
    """The kept cells' embedding on the workers, block by block (futures of its points,
    or read by each search step: ``stored``), with what the search needs of each block:
    its lists (``coarse``) and, above
    ``exact_knn_below`` cells, the inverted lists' ``centroids`` (as `knn_index` trains
    them on the same cells)."""

    bounds: list[tuple[int, int]]  # positions among the kept cells
    points: list[Any]  # futures; or [] (``stored``): each search step reads its block
    coarse: list[Any]
    centroids: Any  # a future, or None: exact search
    stored: tuple[str, str, Any] | None = None  # (store, element, kept rows' future)

    @property
    def exact(self) -> bool:
        return self.centroids is None

    def _chain(self, client: Any, queries: Any, coarse: Any, k: int, centroids: Any) -> Any:
        found = None
        for i, ((a, b), shard) in enumerate(zip(self.bounds, self.coarse, strict=True)):
            if self.stored is None:
                found = client.submit(search_shard, queries, coarse, self.points[i], shard, a,
                                      centroids, k, found)  # fmt: skip
            else:
                store, element, kept = self.stored
                found = client.submit(search_stored, queries, coarse, store, element, kept,
                                      (a, b), shard, centroids, k, found)  # fmt: skip
        return found

    def search(self, client: Any, queries: list[Any], k: int, coarse: list[Any] | None = None):
        """The ``k`` nearest kept cells (positions) of each block of ``queries`` (futures
        of points; ``coarse``: their `coarse_block`, computed when None): futures of
        `Found`, as one index over all cells finds them; queries whose probed lists hold
        fewer than ``k`` cells are searched exactly (as `neighbours_of`)."""
        if coarse is None:
            coarse = [client.submit(coarse_block, q, self.centroids) for q in queries]
        found = [
            self._chain(client, q, c, k, self.centroids)
            for q, c in zip(queries, coarse, strict=True)
        ]
        short = client.gather([client.submit(short_rows, f) for f in found])
        for i, missing in enumerate(short):
            if missing.size and not self.exact:
                some = client.submit(_take, queries[i], missing)
                exact = self._chain(client, some, None, k, None)
                found[i] = client.submit(replace_rows, found[i], missing, exact)
        return found


def load_shards(
    client: Any, store: str, element: str, rows: np.ndarray, *, exact_knn_below: int,
    seed: int, block_cells: int = BLOCK_CELLS, probes: bool = False, resident: bool = True,
) -> Shards:  # fmt: skip
    """Read the embedding rows ``rows`` (the kept cells, ascending) onto the workers in
    blocks of ``block_cells``; with ``probes`` each block's `coarse_block` keeps its
    cells' probes too (the blocks are then their own queries, as in the graph). Not
    ``resident``: only the blocks' lists stay on the workers (4-8 bytes a cell, not the
    embedding's 200) and each search step reads its block again (~0.1 s for 150k cells
    of 50 dimensions): the workers' memory does not grow with the cells."""
    bounds = [(a, min(a + block_cells, rows.size)) for a in range(0, rows.size, block_cells)]
    centroids = None
    if rows.size >= exact_knn_below:
        train = read_rows(store, element, rows[ivf_training_rows(rows.size, seed)])
        fitted = ivf_centroids(train, n_lists_for(rows.size), seed)
        del train
        centroids = client.scatter(fitted, broadcast=True, hash=False)
    if resident:
        points = [client.submit(read_rows, store, element, rows[a:b]) for a, b in bounds]
        coarse = [client.submit(coarse_block, p, centroids, probes) for p in points]
        return Shards(bounds, points, coarse, centroids)
    kept = client.scatter(rows, broadcast=True, hash=False)
    coarse = [
        client.submit(coarse_stored, store, element, kept, bound, centroids, probes)
        for bound in bounds
    ]  # one block read at a time, not all before their lists
    return Shards(bounds, [], coarse, centroids, (store, element, kept))


def _neighbours(client, store, element, rows, params, block_cells) -> tuple[list[Any], Shards]:
    """Every block's `BlockNeighbors` (futures) and the shards searched. The shards are
    not resident: a search step runs where its queries are and moved its shard's points
    there, so that every block's points ended up on every worker (0.7 GB each at 3.5M
    cells, with the probes as much again). Each step reads its block instead, and the
    query blocks are searched in waves of twice the worker threads, each wave's points
    and probes released when its blocks are done."""
    shards = load_shards(
        client, store, element, rows, exact_knn_below=params.exact_knn_below,
        seed=params.seed, block_cells=block_cells, resident=False,
    )  # fmt: skip
    wave = max(2, 2 * sum(client.nthreads().values()))
    nn: list[Any] = []
    for first in range(0, len(shards.bounds), wave):
        mine = shards.bounds[first : first + wave]
        queries = [client.submit(read_rows, store, element, rows[a:b]) for a, b in mine]
        found = shards.search(client, queries, params.n_neighbors)
        del queries
        nn.extend(client.submit(finish_block, f, a) for f, (a, _) in zip(found, mine, strict=True))
        del found
    return nn, shards


def _lazy_csr(
    client, blocks: list[Any], kept: Any, firsts: list[int], n: int, files: str | None = None
) -> LazyCSR:
    """The blocks' rows (kept positions x kept positions, futures of CSR matrices) as a
    cells x cells CSR whose parts are Dask arrays: block i holds the cohort rows
    ``firsts[i]`` up to the next block's first (``kept``: the kept cells' rows). With
    ``files`` (a path prefix in a folder the workers share) each part is saved there as
    soon as its block is done (`write_cohort_rows`) and read back by the tasks that write
    the matrix; None: the parts stay in the workers' memory until then."""
    lasts = [*firsts[1:], n]
    if files is None:
        parts = [
            client.submit(cohort_rows, b, kept, f, e)
            for b, f, e in zip(blocks, firsts, lasts, strict=True)
        ]
        nnz = client.gather([client.submit(_nnz, p) for p in parts])

        def piece(i: int, j: int) -> Any:
            return dask.delayed(operator.getitem)(parts[i], j)
    else:
        paths = [f"{files}-{i}" for i in range(len(blocks))]
        nnz = client.gather([
            client.submit(write_cohort_rows, b, kept, f, e, path, pure=False)
            for b, f, e, path in zip(blocks, firsts, lasts, paths, strict=True)
        ])  # fmt: skip

        def piece(i: int, j: int) -> Any:
            return dask.delayed(read_part, pure=True)(paths[i], j)

    dtype = np.int32 if sum(nnz) < 2**31 else np.int64
    offsets = np.concatenate([[0], np.cumsum(nnz)])
    indptr: list[da.Array] = []
    indices: list[da.Array] = []
    data: list[da.Array] = []
    for i, (f, e) in enumerate(zip(firsts, lasts, strict=True)):
        indptr.append(da.from_delayed(
            dask.delayed(indptr_part)(piece(i, 0), int(offsets[i]), i == 0, dtype),
            shape=(e - f + (i == 0),), dtype=dtype,
        ))  # fmt: skip
        for out, j, kind in ((indices, 1, np.int32), (data, 2, np.float32)):
            out.append(da.from_delayed(piece(i, j), shape=(nnz[i],), dtype=kind))
    return LazyCSR(
        indptr=da.concatenate(indptr),
        indices=da.concatenate(indices),
        data=da.concatenate(data),
        shape=(n, n),
    )


def _nnz(part: tuple[np.ndarray, ...]) -> int:
    return int(part[1].size)


def _gather_graph(client, blocks: list[Any]) -> sp.csr_matrix:
    """The kept cells' whole graph from its blocks (only below the settings' bounds)."""
    return sp.csr_matrix(sp.vstack(client.gather(blocks), format="csr"))


def _rounds(client, nn: list[Any], task, state: np.ndarray, *args: Any, max_rounds: int = 50):
    """Fill ``state`` (NaN rows / -1 entries) round by round with ``task`` on every
    block (`place_block`, `vote_block`), each round from the last round's state, until
    no block fills anything (as `place_by_neighbors` and `transfer_by_neighbors`)."""
    state = state.copy()
    for _ in range(max_rounds):
        shared = client.scatter(state, broadcast=True, hash=False)
        results = client.gather([client.submit(task, b, shared, *args) for b in nn])
        del shared
        changed = False
        for positions, values in results:
            if task is vote_block:
                ok = values >= 0
                positions, values = positions[ok], values[ok]
            if positions.size:
                state[positions] = values
                changed = True
        if not changed:
            break
    return state


def build_graph_on_workers(
    client: Any,
    store: str,
    element: str,
    keep: np.ndarray,
    sample: np.ndarray,
    *,
    params: GraphConfig,
    block_cells: int = BLOCK_CELLS,
    parts_folder: str | None = None,
) -> ShardedGraph:
    """`build_graph` of the embedding ``element`` of the AnnData-Zarr ``store`` (read by
    the workers, rows of the cells in ``keep``), block by block on ``client``'s cluster;
    the graph's matrices are returned as lazy CSR parts that the workers write.
    ``parts_folder`` (a folder the workers can write, kept by the caller until the
    matrices are written): their parts are saved there as soon as computed, not held in
    the workers' memory (1.1 GB at 3.5M cells) while Leiden and the UMAP run."""
    k, seed = params.n_neighbors, params.seed
    resolutions = tuple(params.resolutions)
    rows = np.flatnonzero(keep)
    n = len(keep)
    if k > rows.size:
        msg = f"asked for {k} neighbours of {rows.size} cells"
        raise ValueError(msg)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    nn, shards = _neighbours(client, store, element, rows, params, block_cells)
    bounds, exact = shards.bounds, shards.exact
    del shards  # the points are released once the search is done
    sums = client.gather([client.submit(distance_sum, b) for b in nn])
    mean_distance = sum(s for s, _ in sums) / max(1, sum(c for _, c in sums))
    graphs = [client.submit(graph_block, b, rows.size, mean_distance) for b in nn]
    parts = [client.submit(transpose_parts, g, bounds) for g in graphs]
    union = [
        client.submit(union_block, g, [client.submit(operator.getitem, p, d) for p in parts])
        for d, g in enumerate(graphs)
    ]
    distances = [client.submit(operator.attrgetter("distances"), g) for g in graphs]
    del graphs, parts
    kept = client.scatter(rows, hash=False)
    firsts = [0, *(int(rows[a]) for a, _ in bounds[1:])]
    files = {m: None if parts_folder is None else f"{parts_folder}/{m}" for m in ("d", "c")}
    lazy_distances = _lazy_csr(client, distances, kept, firsts, n, files["d"])
    lazy_connectivities = _lazy_csr(client, union, kept, firsts, n, files["c"])
    seconds["neighbors"] = time.perf_counter() - t

    sketch = fit = None
    if rows.size > params.leiden_max_cells:
        sketch = stratified_sample(sample[rows], params.leiden_max_cells, seed + 1)
    if rows.size > params.umap_max_cells:
        fit = stratified_sample(sample[rows], params.umap_max_cells, seed)
    # the lazy matrices' parts (cohort rows) now hold the blocks' rows: the blocks' own
    # copies are released, but the connectivities when the whole graph is gathered below
    # (a cohort within the Leiden or UMAP bound)
    whole = union if sketch is None or fit is None else None
    del distances, union

    t = time.perf_counter()
    if sketch is not None:
        x_sketch = read_rows(store, element, rows[sketch])
        sketch_nn = nearest_neighbors(
            x_sketch, k, exact_knn_below=params.exact_knn_below, seed=seed
        )
        _, leiden_graph = knn_graphs(sketch_nn, seed=seed)
        del sketch_nn, x_sketch
        seconds["leiden_neighbors"] = time.perf_counter() - t
    else:
        assert whole is not None
        leiden_graph = _gather_graph(client, whole)
    scattered = client.scatter(leiden_graph, hash=False)
    leiden = client.submit(timed_leiden, scattered, resolutions, seed, pure=False)
    del leiden_graph

    t = time.perf_counter()
    kept_layout = np.full((rows.size, 2), np.nan, dtype=np.float32)
    if fit is None:
        x = read_rows(store, element, rows)
        assert whole is not None
        kept_layout[:] = umap_layout(_gather_graph(client, whole), x, seed=seed)
        del x
        umap_info: dict[str, Any] = {"fitted_on": "all cells", "n_fitted": int(rows.size)}
    else:
        x_fit = read_rows(store, element, rows[fit])
        sub_nn = nearest_neighbors(x_fit, k, exact_knn_below=params.exact_knn_below, seed=seed)
        _, sub_conn = knn_graphs(sub_nn, seed=seed)
        del sub_nn
        kept_layout[fit] = umap_layout(sub_conn, x_fit, seed=seed)
        del sub_conn, x_fit
        kept_layout = _rounds(client, nn, place_block, kept_layout)
        umap_info = {
            "fitted_on": "a subsample stratified by sample; every other cell placed at the "
            "distance-weighted mean of its placed neighbours in the kNN graph",
            "n_fitted": int(fit.size),
        }
    layout = np.full((n, 2), np.nan, dtype=np.float32)
    layout[rows] = kept_layout
    del kept_layout
    seconds["umap"] = time.perf_counter() - t

    t = time.perf_counter()
    kept_clusters, seconds["leiden"] = leiden.result()
    seconds["leiden_wait"] = time.perf_counter() - t
    del leiden, scattered, whole
    if sketch is not None:
        t = time.perf_counter()
        for r, sketch_labels in kept_clusters.items():
            labels = np.full(rows.size, -1, dtype=np.int64)
            labels[sketch] = sketch_labels
            n_labels = int(labels.max()) + 1
            kept_clusters[r] = by_size(_rounds(client, nn, vote_block, labels, n_labels))
        seconds["leiden_transfer"] = time.perf_counter() - t
    clusters, leiden_info = all_cells(kept_clusters, rows, n, sketch)
    info = {
        "neighbors": {"n_neighbors": k, "exact": exact},
        "umap": umap_info,
        "leiden": leiden_info,
    }
    return ShardedGraph(
        distances=lazy_distances,
        connectivities=lazy_connectivities,
        clusters=clusters,
        umap=layout,
        info=info,
        seconds=seconds,
    )


__all__ = ["BlockNeighbors", "ShardedGraph", "build_graph_on_workers"]
