"""Neighbourhoods cut from one lineage's cells, tested out of each sample's cells of that
lineage (the ``denominator`` of tests.csv; abundance's B denominator does the same for
labels).

Why a family of their own: a neighbourhood's counts out of *all* of a sample's cells
carry the lineage's own variation between patients, which dilutes a shift within the
lineage (at the study's size the planted DN2 difference has p = 0.06 on that scale and
4e-5 within B: docs/benchmarks.md). And within a lineage, each patient's cells of a
subset sit apart in the embedding (patients differ in their genes, not only in their
processing batch), so a neighbourhood holds a few patients' cells and its counts vary
between patients far more than the subset's share does. Harmony over the patients, on
the lineage's PCs alone, puts them together again (`lineage_embedding`); new samples are
mapped onto that Harmony reference as Symphony maps them (`pipeline.integrate`).

The embedding of one lineage fits in the driver (the B cells are ~10% of PBMC: 87k of the
study's 853k QC-passed cells, ~17 MB of 50 PCs); the neighbours are searched a block of
neighbourhoods at a time with one index and the member lists written to a zarr array as
they are found, so that neighbourhoods x k indices are never held at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..graph import neighbour_blocks
from ..integrate import HarmonyResult, harmony_embedding
from ._kernels import draw_cells, majority_labels, nearest_to_median, sample_counts

REFINE_CELLS = 10_000  # sampled cells refined at a time
BLOCK_ENTRIES = 2_500_000  # neighbourhoods x k searched at a time (~30 MB of results)
CORRECT_CELLS = 10_000  # cells beyond Harmony's fit corrected at a time


@dataclass(frozen=True)
class LineageNeighbourhoods:
    """One lineage's neighbourhoods; member lists (cohort rows) in the zarr array the
    caller named."""

    index_positions: np.ndarray  # among the lineage's cells, ascending
    index_points: np.ndarray  # their rows of the embedding (to place new cells)
    kth_distance: np.ndarray  # float32
    counts: np.ndarray  # neighbourhoods x samples, int32
    labels: dict[str, tuple[np.ndarray, np.ndarray]]  # level -> (majority code, share)
    exact: bool


def lineage_embedding(
    pcs: np.ndarray,
    key: np.ndarray,
    *,
    max_cells: int | None,
    theta: float,
    max_iter: int,
    seed: int,
) -> HarmonyResult:
    """Harmony on a lineage's PCs over ``key`` (each cell's patient or sample): the
    corrected embedding (float32), the reference new cells are mapped onto and the cells
    it was fitted on (above ``max_cells`` a subsample stratified by ``key``, the rest
    corrected by the fitted model ``CORRECT_CELLS`` at a time). ``pcs`` as stored
    (float32): Harmony takes its fitted rows and each chunk in float64, so no float64 copy
    of every cell's PCs is made (the same result, bit for bit)."""
    result = harmony_embedding(np.asarray(pcs), np.asarray(key).astype(str),
                               max_cells=max_cells, theta=theta, max_iter=max_iter, seed=seed,
                               chunk_cells=CORRECT_CELLS)  # fmt: skip
    return result


def refined_positions(
    x: np.ndarray,
    n_neighbors: int,
    *,
    prop: float,
    seed: int,
    most: int | None,
    exact_knn_below: int,
    knn_seed: int,
) -> np.ndarray:
    """Milo's refined sampling on the kNN graph of ``x`` itself: ``prop`` of the rows
    (at most ``most``) drawn at random, each replaced by the cell among it and its
    ``n_neighbors`` nearest that is nearest to their median position; distinct, ascending."""
    sampled = draw_cells(x.shape[0], prop, seed, most)
    width = min(n_neighbors + 1, x.shape[0])
    found = []
    for nn in neighbour_blocks(x, sampled, width, block=REFINE_CELLS,
                               exact_knn_below=exact_knn_below, seed=knn_seed):  # fmt: skip
        found.append(nearest_to_median(nn.indices, x[nn.indices]))
    return np.unique(np.concatenate(found))


def lineage_neighbourhoods(
    x: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    n_neighbors: int,
    prop: float,
    seed: int,
    most: int | None,
    exact_knn_below: int,
    knn_seed: int,
    sample_codes: np.ndarray,
    n_samples: int,
    label_codes: dict[str, tuple[np.ndarray, int]],
    members_path: Path,
) -> LineageNeighbourhoods:
    """Neighbourhoods of the cells ``rows`` (cohort rows, ascending) whose embedding is
    ``x`` (a row per cell of ``rows``): refined index cells, each with its ``k`` nearest
    cells of ``x``; their counts per sample (``sample_codes``: every cohort row's sample)
    and majority labels (``label_codes``: level -> (code per cohort row, labels)). The
    member lists (cohort rows, each neighbourhood's ascending) go to a new int32 zarr
    array at ``members_path``, chunked a block of neighbourhoods at a time."""
    index = refined_positions(x, n_neighbors, prop=prop, seed=seed, most=most,
                              exact_knn_below=exact_knn_below, knn_seed=knn_seed)  # fmt: skip
    block = max(1, BLOCK_ENTRIES // k)
    out = zarr.create_array(str(members_path), shape=(index.size, k), chunks=(block, k),
                            dtype="int32")  # fmt: skip
    kth, counts = [], []
    labels: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {level: [] for level in label_codes}
    exact = True
    blocks = neighbour_blocks(x, index, k, block=block, exact_knn_below=exact_knn_below,
                              seed=knn_seed)  # fmt: skip
    for start, nn in zip(range(0, index.size, block), blocks, strict=False):
        exact = nn.exact
        members = rows[nn.indices].astype(np.int32)
        members.sort(axis=1)
        out[start : start + members.shape[0]] = members
        kth.append(nn.distances[:, -1].astype(np.float32))
        counts.append(sample_counts(members, sample_codes, n_samples).astype(np.int32))
        for level, (codes, n_labels) in label_codes.items():
            labels[level].append(majority_labels(members, codes, n_labels))
    joined = {level: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
              for level, parts in labels.items()}  # fmt: skip
    return LineageNeighbourhoods(
        index_positions=index,
        index_points=np.ascontiguousarray(x[index]),
        kth_distance=np.concatenate(kth),
        counts=np.vstack(counts),
        labels=joined,
        exact=exact,
    )


__all__ = [
    "LineageNeighbourhoods",
    "lineage_embedding",
    "lineage_neighbourhoods",
    "refined_positions",
]
