"""The integrate stage: Harmony on the QC-passed cells' PCs, with mixing metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from ..config import IntegrateConfig
from ..store import read_array_rows
from ._blocks import block_embedding, block_facts, correct_block
from ._harmony import (
    SIGMA,
    HarmonyReference,
    HarmonyResult,
    check_batches,
    fit_harmony,
    fit_rows,
)
from ._metrics import integration_metrics

BLOCK_CELLS = 50_000  # cells per correction task (Harmony's working memory per task)


@dataclass(frozen=True)
class IntegrationResult:
    embeddings: dict[str, Any]  # obsm key -> cells x dims (NaN: not kept); Harmony's lazy
    metrics: dict[str, dict[str, float]]  # embedding -> metric -> value (batch mixing)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """Some rows of a zarr or numpy array (a zarr array: a chunk of rows at a time)."""
    if isinstance(array, zarr.Array):
        return read_array_rows(array, rows)
    return np.asarray(array[rows])


def _harmony(
    pcs: Any,
    keep: np.ndarray,
    batch: np.ndarray,
    sample: np.ndarray | None,
    sampled: np.ndarray,
    params: IntegrateConfig,
    block_cells: int,
) -> tuple[da.Array, np.ndarray, dict[str, Any]]:
    """Harmony fitted in this process on at most ``params.harmony_max_cells`` kept cells
    (`harmony_embedding`'s subsample), every block of ``block_cells`` cells corrected by a
    task (`correct_block`; results kept, on the workers under a distributed client, until
    the embedding is written). Returns the lazy embedding, its rows ``sampled`` and the
    fit's record."""
    kept = np.flatnonzero(keep)
    kept_batch = np.asarray(batch)[kept].astype(str)
    check_batches(kept.size, kept_batch)
    codes = np.zeros(keep.size, dtype=np.int64)
    codes[kept] = np.unique(kept_batch, return_inverse=True)[1]
    strata = None if sample is None else np.asarray(sample)[kept]
    fit = kept[fit_rows(kept_batch, strata, params.harmony_max_cells, params.seed)]
    fit_pcs = _rows(pcs, fit)
    if np.isnan(fit_pcs).any():
        msg = "X_pca has NaN for cells that passed QC: re-run the preprocess stage"
        raise ValueError(msg)
    model = fit_harmony(
        fit_pcs, np.asarray(batch)[fit].astype(str), codes[fit], theta=params.harmony_theta,
        max_iter=params.harmony_max_iter, seed=params.seed, offsets=fit.size < kept.size,
    )  # fmt: skip
    del fit_pcs
    fitted_values = model.corrected.astype(np.float32)
    n, dims = keep.size, fitted_values.shape[1]
    source = dask.delayed(pcs, pure=False)  # one key: the tasks slice it
    blocks, shapes = [], []
    for start in range(0, n, block_cells):
        stop = min(start + block_cells, n)
        f0, f1 = np.searchsorted(fit, [start, stop])
        s0, s1 = np.searchsorted(sampled, [start, stop])
        blocks.append(dask.delayed(correct_block)(
            source, start, stop, keep[start:stop], codes[start:stop], fit[f0:f1] - start,
            fitted_values[f0:f1], model.centroids, model.offsets, sampled[s0:s1] - start,
        ))  # fmt: skip
        shapes.append((stop - start, dims))
    blocks = list(dask.persist(*blocks))
    facts = dask.compute(*[dask.delayed(block_facts)(b) for b in blocks])
    embedding = da.concatenate([
        da.from_delayed(dask.delayed(block_embedding)(b), shape=shape, dtype=np.float32)
        for b, shape in zip(blocks, shapes, strict=True)
    ])  # fmt: skip
    sizes = model.assignments.sum(axis=0) + sum(f[0] for f in facts)
    sums = model.assignments.T @ model.corrected + sum(f[1] for f in facts)
    result = HarmonyResult(
        embedding=np.empty((0, dims), dtype=np.float32),  # written lazily, not held
        reference=HarmonyReference(model.centroids.astype(np.float32), sizes, sums, SIGMA),
        n_iterations=model.n_iterations,
        converged=model.n_iterations < params.harmony_max_iter,
        n_fitted=int(fit.size),
    )
    sampled_rows = np.vstack([f[2] for f in facts]) if facts else np.empty((0, dims))
    return embedding, sampled_rows, result.to_record()


def integrate_cohort(
    pcs: Any,
    keep: np.ndarray,
    batch: np.ndarray,
    *,
    params: IntegrateConfig,
    other: dict[str, np.ndarray] | None = None,
    sample: np.ndarray | None = None,
    block_cells: int = BLOCK_CELLS,
) -> IntegrationResult:
    """Harmony-corrected PCs (obsm ``X_pca_harmony``, a Dask array: each block of
    ``block_cells`` cells corrected by a task that reads its rows of ``pcs``, a zarr array
    such as cohort.zarr's ``obsm/X_pca`` or a numpy array) of the cells in ``keep``, when
    the integrate section's ``params.method`` includes Harmony. Harmony itself is fitted
    in this process on at most ``params.harmony_max_cells`` kept cells, stratified by
    ``sample`` (`harmony_embedding`, which gives the same embedding in memory).

    Batch mixing (iLISI, batch silhouette) is measured on the same subsample of kept cells
    before (``X_pca``) and after integration, for Harmony's embedding and for ``other``
    integrated embeddings given (e.g. ``X_scvi``).
    """
    seed = params.seed
    seconds: dict[str, float] = {}
    embeddings: dict[str, Any] = dict(other or {})
    info: dict[str, Any] = {}
    # the metrics' subsample of kept cells (as `integration_metrics` draws it), taken
    # here so that no embedding is read whole
    kept_rows = np.flatnonzero(keep)
    if kept_rows.size > params.metrics_max_cells:
        draw = np.random.default_rng(seed).choice(
            kept_rows.size, params.metrics_max_cells, replace=False
        )
        kept_rows = kept_rows[np.sort(draw)]
    sampled = {"X_pca": _rows(pcs, kept_rows)}
    if np.isnan(sampled["X_pca"]).any():
        msg = "X_pca has NaN for cells that passed QC: re-run the preprocess stage"
        raise ValueError(msg)
    if params.method in ("harmony", "both"):
        t = time.perf_counter()
        lazy, rows, info["harmony"] = _harmony(
            pcs, keep, batch, sample, kept_rows, params, block_cells
        )
        embeddings["X_pca_harmony"] = lazy
        sampled["X_pca_harmony"] = rows
        seconds["harmony"] = time.perf_counter() - t
    for key, emb in (other or {}).items():
        sampled[key] = np.asarray(emb[kept_rows])
    order = ["X_pca", *(other or {}), *(["X_pca_harmony"] if "X_pca_harmony" in sampled else [])]
    sampled = {key: sampled[key] for key in order}

    t = time.perf_counter()
    metrics = {
        key: integration_metrics(emb, batch[kept_rows], max_cells=kept_rows.size, seed=seed)
        for key, emb in sampled.items()
    }
    seconds["metrics"] = time.perf_counter() - t
    return IntegrationResult(embeddings=embeddings, metrics=metrics, info=info, seconds=seconds)
