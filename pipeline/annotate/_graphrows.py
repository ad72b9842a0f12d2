"""The annotate stage's graph consensus over the cohort's kNN graph without the graph in
the driver: a level's cells' graph is a `MemberGraph` (the stored connectivities
restricted to those cells, as `_restrict` restricts an in-memory matrix), whose rows
the workers' tasks read a chunk of cells at a time (`member_rows`, in `_cellcalls`); the
rows are those of the in-memory graph, row for row (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr


@dataclass(frozen=True)
class StoredGraph:
    """A cells x cells CSR matrix in an AnnData-Zarr store (e.g. obsp/connectivities)."""

    store: str
    element: str
    n_cells: int


@dataclass(frozen=True)
class MemberGraph:
    """``source`` restricted to the cells ``rows`` (cohort rows, ascending): edges to other
    cells dropped; its rows read by the workers (`member_rows`)."""

    source: StoredGraph
    rows: np.ndarray

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
