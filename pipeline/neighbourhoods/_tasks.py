"""The neighbourhoods stage's worker tasks. Each reads what it needs of cohort.zarr itself
(rows of the embedding, rows of the kNN graph) and returns per-neighbourhood results or
writes its block of member lists, so that the driver never holds the embedding, the graph
or the member lists: its memory does not grow with the cells beyond a few per-cell codes.

The neighbour search is the graph stage's sharded search (`pipeline.graph.Shards`): the
kept cells' embedding is read once onto the workers in blocks, and each block of index
cells searches block after block, keeping the nearest ``k`` so far: the same neighbours
as one index over all cells (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from ..graph import self_first
from ..store import read_rows
from ._kernels import graph_rows_with_self, majority_labels, nearest_to_median, sample_counts

BLOCK_ENTRIES = 1_000_000  # neighbourhoods x k per search task (~12 MB of results)


def _unique_rows(store: str, element: str, cells: np.ndarray) -> np.ndarray:
    """``cells`` (any shape, any order, repeats) -> their rows, shape ``cells.shape`` x dims."""
    uniq, inverse = np.unique(cells, return_inverse=True)
    points = read_rows(store, element, uniq)
    return points[inverse.reshape(cells.shape)]


def graph_widths(store: str, graph: str, rows: np.ndarray) -> np.ndarray:
    """Neighbours per row of the CSR graph ``graph`` (a group of cohort.zarr) at ``rows``."""
    indptr = zarr.open_array(store, path=f"{graph}/indptr", mode="r")
    rows = np.asarray(rows, dtype=np.int64)
    return np.asarray(indptr.get_orthogonal_selection(rows + 1)) - np.asarray(
        indptr.get_orthogonal_selection(rows)
    )


def refine_block(
    store: str, element: str, graph: str, sampled: np.ndarray, width: int
) -> np.ndarray:
    """Milo's refined sampling (`refined_index_cells`) of ``sampled`` (cohort rows,
    ascending), reading their graph rows and the embedding rows of them and their
    neighbours; ``width`` is the widest sampled row's neighbours + 1, over all blocks."""
    sampled = np.asarray(sampled, dtype=np.int64)
    lo, hi = int(sampled[0]), int(sampled[-1]) + 1
    indptr = np.asarray(zarr.open_array(store, path=f"{graph}/indptr", mode="r")[lo : hi + 1])
    indptr = indptr.astype(np.int64)
    indices = zarr.open_array(store, path=f"{graph}/indices", mode="r")[indptr[0] : indptr[-1]]
    members = graph_rows_with_self(indptr - indptr[0], np.asarray(indices), sampled, width, lo)
    return nearest_to_median(members, _unique_rows(store, element, members))


@dataclass(frozen=True)
class Block:
    """One block of neighbourhoods (rows ``start`` .. ``start + len(kth)`` of all)."""

    start: int
    kth_distance: np.ndarray  # float32: to the farthest member
    counts: np.ndarray  # neighbourhoods x samples, int32
    labels: dict[str, tuple[np.ndarray, np.ndarray]]  # level -> (majority code, share)


def nhood_block(
    found: tuple[np.ndarray, np.ndarray],
    start: int,
    index_positions: np.ndarray,
    kept_rows: np.ndarray,
    sample_codes: np.ndarray,
    n_samples: int,
    label_codes: dict[str, tuple[np.ndarray, int]],
    members_path: str,
) -> Block:
    """The neighbourhoods of the index cells ``index_positions`` (positions among the
    kept cells ``kept_rows``, cohort rows ascending) from their ``k`` nearest kept cells
    ``found`` (positions, squared distances; `pipeline.graph.Shards.search`). Writes the
    member lists (cohort rows, each neighbourhood's ascending) to rows ``start``.. of the
    int32 array at ``members_path``; returns the counts per sample and the majority
    labels (``label_codes``: level -> (code per cohort row, number of labels))."""
    ids = found[0].copy()
    distances = np.sqrt(np.maximum(found[1], 0)).astype(np.float32)
    self_first(ids, distances, own=np.asarray(index_positions, dtype=np.int64))
    members = kept_rows[ids].astype(np.int32, copy=False)
    del ids
    members.sort(axis=1)
    zarr.open_array(members_path, mode="r+")[start : start + members.shape[0]] = members
    labels = {
        level: majority_labels(members, codes, n_labels)
        for level, (codes, n_labels) in label_codes.items()
    }
    counts = sample_counts(members, sample_codes, n_samples).astype(np.int32)
    return Block(start, distances[:, -1].astype(np.float32), counts, labels)
