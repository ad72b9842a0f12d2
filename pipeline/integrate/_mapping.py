"""Harmony reference mapping of new cells, as Symphony does it (no I/O).

Symphony (Kang et al., Nat Commun 2021) maps query cells onto a Harmony reference
without changing it. The reference is compressed to, per Harmony cluster k, the soft
cluster size N_k = sum_i R_ki and the sum of the corrected embeddings C_k = sum_i R_ki z_i
(`harmony_embedding` records both). A query cell's PCs (projected with the reference's
centre and loadings) are soft-assigned to the reference centroids, and within each
cluster a ridge regression on the query batches -- with the reference entering the
intercept through N_k and C_k -- estimates each query batch's offset, which is removed.
The reference's cells are not touched, so their embedding, graph and labels stay valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._harmony import HarmonyReference


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def reference_centroids(cluster_sums: np.ndarray) -> np.ndarray:
    """Cluster centroids in the corrected space, unit length (clusters x components)."""
    return _unit_rows(np.asarray(cluster_sums, dtype=np.float64))


def soft_clusters(z: np.ndarray, centroids: np.ndarray, sigma: float) -> np.ndarray:
    """Harmony's soft assignment (cells x clusters, rows sum to 1) of cosine-normalized
    cells to unit ``centroids``: R_ik proportional to exp(-2 (1 - cos) / sigma)."""
    dist = 2.0 * (1.0 - _unit_rows(np.asarray(z, dtype=np.float64)) @ centroids.T)
    logits = -dist / sigma
    logits -= logits.max(axis=1, keepdims=True)
    r = np.exp(logits)
    return r / r.sum(axis=1, keepdims=True)


def map_to_reference(
    z: np.ndarray, batch: np.ndarray, reference: HarmonyReference, *, ridge: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The query cells' PCs ``z`` (cells x components) corrected into the reference's
    Harmony space, and their soft cluster assignments (cells x clusters).

    ``batch`` labels each query cell's batch (a label also used in the reference is
    still its own query level: the reference's offsets are fixed). ``ridge`` is
    Harmony's lambda on the batch terms (the intercept is not penalized).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.shape[0] != len(batch):
        msg = f"expected one batch label per query cell, got {len(batch)} for {z.shape[0]}"
        raise ValueError(msg)
    sizes = np.asarray(reference.cluster_sizes, dtype=np.float64)
    sums = np.asarray(reference.cluster_sums, dtype=np.float64)
    if sums.shape != (sizes.size, z.shape[1]):
        msg = (
            f"the reference has {sizes.size} clusters x {sums.shape[1]} components; "
            f"the query has {z.shape[1]} components"
        )
        raise ValueError(msg)
    r = soft_clusters(z, reference_centroids(sums), reference.sigma)
    levels, codes = np.unique(np.asarray(batch).astype(str), return_inverse=True)
    design = np.zeros((z.shape[0], levels.size + 1))  # intercept, one column per batch
    design[:, 0] = 1.0
    design[np.arange(z.shape[0]), codes + 1] = 1.0
    penalty = np.diag([0.0, *([ridge] * levels.size)])
    corrected = z.copy()
    for k in range(sizes.size):
        weighted = design * r[:, k : k + 1]  # cells x terms
        lhs = weighted.T @ design + penalty
        lhs[0, 0] += sizes[k]
        rhs = weighted.T @ z
        rhs[0] += sums[k]
        beta = np.linalg.solve(lhs, rhs)
        beta[0] = 0.0  # keep the reference's cluster mean; remove the batch offsets
        corrected -= weighted @ beta
    return corrected.astype(np.float32), r.astype(np.float32)
