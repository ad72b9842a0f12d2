"""The integrate stage's tasks: one block of cells corrected with the fitted Harmony model
(pure; the PCs are any array sliced by rows, e.g. cohort.zarr's ``obsm/X_pca``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._harmony import SIGMA, correct_cells


@dataclass(frozen=True)
class CorrectedBlock:
    embedding: np.ndarray  # the block's cells x components, float32; NaN: not kept
    sizes: np.ndarray  # clusters: summed assignments of the block's corrected cells
    sums: np.ndarray  # clusters x components: their assignment-weighted corrected PCs
    sampled: np.ndarray  # the rows ``sampled`` of ``embedding`` (the metrics' sample)


def correct_block(
    pcs: Any,
    start: int,
    stop: int,
    keep: np.ndarray,
    codes: np.ndarray,
    fitted: np.ndarray,
    fitted_values: np.ndarray,
    centroids: np.ndarray,
    offsets: np.ndarray | None,
    sampled: np.ndarray,
) -> CorrectedBlock:
    """Harmony's embedding of cells ``start:stop``: the rows ``fitted`` (positions in the
    block) take Harmony's own correction ``fitted_values``, every other kept cell is
    corrected with the model (`correct_cells`, batch ``codes``), the others are NaN."""
    x = np.asarray(pcs[start:stop], dtype=np.float32)
    if np.isnan(x[keep]).any():
        msg = "X_pca has NaN for cells that passed QC: re-run the preprocess stage"
        raise ValueError(msg)
    out = np.full(x.shape, np.nan, dtype=np.float32)
    out[fitted] = fitted_values
    rest = keep.copy()
    rest[fitted] = False
    rows = np.flatnonzero(rest)
    sizes = np.zeros(centroids.shape[1])
    sums = np.zeros((centroids.shape[1], x.shape[1]))
    if rows.size:
        assert offsets is not None
        z, r = correct_cells(x[rows], codes[rows], centroids, offsets, SIGMA)
        out[rows] = z
        sizes, sums = r.sum(axis=0), r.T @ z
    return CorrectedBlock(out, sizes, sums, out[sampled])


def block_facts(block: CorrectedBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the driver gathers of a block: (sizes, sums, sampled rows)."""
    return block.sizes, block.sums, block.sampled


def block_embedding(block: CorrectedBlock) -> np.ndarray:
    return block.embedding
