"""The annotate stage's graph consensus over the cohort's kNN graph without the graph in
the driver: a level's cells' graph is a `MemberGraph` (the stored connectivities
restricted to those cells, as `_restrict` restricts an in-memory matrix), and its
neighbour means are computed by tasks that each read their rows of the store. The
driver holds the cells' votes (which it holds anyway) and gets back their neighbours'
means; the results are those of the in-memory graph, row for row (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr

from ._model import neighbour_mean

BLOCK_CELLS = 200_000  # member cells per task


@dataclass(frozen=True)
class StoredGraph:
    """A cells x cells CSR matrix in an AnnData-Zarr store (e.g. obsp/connectivities)."""

    store: str
    element: str
    n_cells: int


@dataclass(frozen=True)
class MemberGraph:
    """``source`` restricted to the cells ``rows`` (cohort rows, ascending): edges to other
    cells dropped; its neighbour means computed on ``client``'s workers."""

    client: Any
    source: StoredGraph
    rows: np.ndarray
    block_cells: int = BLOCK_CELLS

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.size, self.rows.size)


def graph_dtype(source: StoredGraph) -> Any:
    """The dtype the neighbours' votes are multiplied in: the stored graph's when it is
    floating, else float64 (as `neighbour_mean` does for an in-memory graph)."""
    stored = zarr.open_array(source.store, path=f"{source.element}/data", mode="r")
    return stored.dtype if np.issubdtype(stored.dtype, np.floating) else np.float64


def member_rows(source: StoredGraph, rows: np.ndarray, position: np.ndarray) -> sp.csr_matrix:
    """The rows ``rows`` (ascending) of the stored graph, their columns renumbered by
    ``position`` (cohort row -> member number, -1: not a member, whose edges are
    dropped), in the stored order of each row's entries."""

    def part(name: str) -> zarr.Array:
        return zarr.open_array(source.store, path=f"{source.element}/{name}", mode="r")

    lo, hi = int(rows[0]), int(rows[-1]) + 1
    indptr = np.asarray(part("indptr")[lo : hi + 1], dtype=np.int64)
    first, last = int(indptr[0]), int(indptr[-1])
    indices = np.asarray(part("indices")[first:last])
    data = np.asarray(part("data")[first:last])
    block = sp.csr_matrix((data, indices, indptr - first), shape=(hi - lo, source.n_cells))[
        rows - lo
    ]
    new = position[block.indices]
    inside = new >= 0
    owner = np.repeat(np.arange(rows.size), np.diff(block.indptr))
    counts = np.bincount(owner[inside], minlength=rows.size)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix(
        (block.data[inside], new[inside], indptr), shape=(rows.size, position.max() + 1)
    )


def _block_mean(
    source: StoredGraph, rows: np.ndarray, position: np.ndarray, vote: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return neighbour_mean(member_rows(source, rows, position), vote)


@neighbour_mean.register
def _(graph: MemberGraph, vote: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    client, rows = graph.client, graph.rows
    position = np.full(graph.source.n_cells, -1, dtype=np.int32)
    position[rows] = np.arange(rows.size, dtype=np.int32)
    # the votes in the dtype `neighbour_mean` multiplies them in (the graph's, when it is
    # floating): each worker holds one copy, and no task makes another
    vote = vote.astype(graph_dtype(graph.source), copy=False)
    shared = client.scatter({"position": position, "vote": vote}, broadcast=True, hash=False)
    del position
    futures = [
        client.submit(_block_mean, graph.source, rows[a : a + graph.block_cells],
                      shared["position"], shared["vote"])
        for a in range(0, rows.size, graph.block_cells)
    ]  # fmt: skip
    del shared
    # each block's means copied into the result as they arrive (not all blocks, then
    # their stack: two copies of a cells x programs array)
    mean: np.ndarray | None = None
    degree = np.zeros(rows.size)
    for i, future in enumerate(futures):
        m, d = future.result()
        future.release()
        if mean is None:
            mean = np.empty((rows.size, m.shape[1]), dtype=m.dtype)
        a = i * graph.block_cells
        mean[a : a + len(d)], degree[a : a + len(d)] = m, d
    if mean is None:
        return np.zeros((0, vote.shape[1])), np.zeros(0)
    return mean, degree
