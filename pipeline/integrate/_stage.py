"""The integrate stage: Harmony on the QC-passed cells' PCs, with mixing metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import IntegrateConfig
from ._harmony import harmony_embedding
from ._metrics import integration_metrics


@dataclass(frozen=True)
class IntegrationResult:
    embeddings: dict[str, np.ndarray]  # obsm key -> cells x dims (NaN for cells not kept)
    metrics: dict[str, dict[str, float]]  # embedding -> metric -> value (batch mixing)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def integrate_cohort(
    pcs: np.ndarray,
    keep: np.ndarray,
    batch: np.ndarray,
    *,
    params: IntegrateConfig,
    other: dict[str, np.ndarray] | None = None,
    sample: np.ndarray | None = None,
) -> IntegrationResult:
    """Harmony-corrected PCs (obsm ``X_pca_harmony``) of the cells in ``keep`` when the
    integrate section's ``params.method`` includes Harmony.

    Batch mixing (iLISI, batch silhouette) is measured on the same subsample of kept cells
    before (``X_pca``) and after integration, for Harmony's embedding and for ``other``
    integrated embeddings given (e.g. ``X_scvi``). Above ``params.harmony_max_cells`` kept
    cells Harmony is fitted on a subsample stratified by ``sample`` (`harmony_embedding`).
    """
    seed = params.seed
    kept_pcs = pcs[keep]
    if np.isnan(kept_pcs).any():
        msg = "X_pca has NaN for cells that passed QC: re-run the preprocess stage"
        raise ValueError(msg)
    seconds: dict[str, float] = {}
    embeddings = dict(other or {})
    info: dict[str, Any] = {}
    if params.method in ("harmony", "both"):
        t = time.perf_counter()
        result = harmony_embedding(
            kept_pcs,
            batch[keep],
            theta=params.harmony_theta,
            max_iter=params.harmony_max_iter,
            seed=seed,
            max_cells=params.harmony_max_cells,
            strata=None if sample is None else sample[keep],
        )
        seconds["harmony"] = time.perf_counter() - t
        corrected = np.full(pcs.shape, np.nan, dtype=np.float32)
        corrected[keep] = result.embedding
        embeddings["X_pca_harmony"] = corrected
        info["harmony"] = result.to_record()

    t = time.perf_counter()
    # the metrics' subsample of kept cells (as `integration_metrics` draws it), taken
    # here so that no embedding is copied whole
    kept_rows = np.flatnonzero(keep)
    if kept_rows.size > params.metrics_max_cells:
        draw = np.random.default_rng(seed).choice(
            kept_rows.size, params.metrics_max_cells, replace=False
        )
        kept_rows = kept_rows[np.sort(draw)]
    metrics = {
        key: integration_metrics(
            emb[kept_rows], batch[kept_rows], max_cells=kept_rows.size, seed=seed
        )
        for key, emb in {"X_pca": pcs, **embeddings}.items()
    }
    seconds["metrics"] = time.perf_counter() - t
    return IntegrationResult(embeddings=embeddings, metrics=metrics, info=info, seconds=seconds)
