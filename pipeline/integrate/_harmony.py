"""Harmony on the principal components (harmonypy's C++ implementation; no I/O)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HarmonyResult:
    embedding: np.ndarray  # cells x components, float32
    centroids: np.ndarray  # components x clusters (harmonypy's Y)
    # Symphony's compression of the reference (Kang et al. 2021), for mapping new cells:
    # per cluster k, N_k = sum_i R_ki and C_k = sum_i R_ki z_i (z: corrected PCs)
    cluster_sizes: np.ndarray  # clusters
    cluster_sums: np.ndarray  # clusters x components
    sigma: float
    n_iterations: int
    converged: bool


SIGMA = 0.1  # harmonypy's default soft-clustering bandwidth (run_harmony's sigma)


def harmony_embedding(
    pcs: np.ndarray,
    batch: np.ndarray,
    *,
    theta: float = 2.0,
    n_clusters: int | None = None,
    max_iter: int = 10,
    seed: int = 0,
    n_threads: int = 0,
) -> HarmonyResult:
    """Harmony-corrected PCs of every row of ``pcs`` for the batch labels ``batch``.

    ``n_clusters`` None: harmonypy's default, min(n / 30, 100). ``n_threads`` 0: one per
    physical core this process may use (results do not depend on it).
    """
    import harmonypy

    if pcs.shape[0] != batch.shape[0]:
        msg = (
            f"expected one batch label per row of the PCs, got {batch.shape[0]} for {pcs.shape[0]}"
        )
        raise ValueError(msg)
    if np.unique(batch).size < 2:
        msg = "Harmony needs at least two batches; found one"
        raise ValueError(msg)
    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    model = harmonypy.run_harmony(
        np.asarray(pcs, dtype=np.float64),
        {"batch": np.asarray(batch).astype(str)},
        "batch",
        theta=theta,
        nclust=n_clusters,
        max_iter_harmony=max_iter,
        sigma=SIGMA,
        random_state=seed,
        ncores=n_threads,
        verbose=False,
    )
    rounds = len(model.objective_harmony) - 1
    r = np.asarray(model.R, dtype=np.float64)  # cells x clusters (harmonypy 2)
    z = np.asarray(model.Z_corr, dtype=np.float64)  # cells x components
    return HarmonyResult(
        embedding=z.astype(np.float32),
        centroids=np.asarray(model.Y, dtype=np.float32),
        cluster_sizes=r.sum(axis=0),
        cluster_sums=r.T @ z,
        sigma=SIGMA,
        n_iterations=rounds,
        converged=rounds < max_iter,
    )
