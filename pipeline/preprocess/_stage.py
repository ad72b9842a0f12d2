"""The preprocess stage: normalize + log1p, seurat_v3 HVGs and PCA, out of core on Dask.

Up to four passes over the cohort's chunks, each reducing to per-gene sums so that no
process holds more than a chunk of counts: (1) per-batch moments of raw counts (skipped
when the qc stage's per-sample moments are given), (2) per-batch
moments of counts clipped at Seurat v3's bound, (3) X'X of the log-normalized HVGs,
(4) the projection onto the principal axes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anndata as ad
import dask
import numpy as np
import pandas as pd
from distributed import Client

from ._kernels import Moments, add_gram, add_moments, batch_moments, clipped_moments, gram, project
from ._models import clip_values, pca_from_gram, seurat_v3_table


@dataclass(frozen=True)
class PreprocessResult:
    var: pd.DataFrame  # the HVG table, one row per cohort gene
    pca: np.ndarray  # cells x n_comps float32; NaN for cells that did not pass QC
    components: np.ndarray  # HVGs x n_comps
    variance: np.ndarray
    variance_ratio: np.ndarray
    seconds: dict[str, float]


def _tree_sum(parts: list[Any], add: Callable[[Any, Any], Any]) -> Any:
    """Pairwise sums as a dask.delayed tree (reductions run on the workers)."""
    while len(parts) > 1:
        parts = [
            dask.delayed(add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def preprocess_cohort(
    cohort: ad.AnnData,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    batch_key: str = "batch",
    n_top_genes: int = 2000,
    span: float = 0.3,
    target_sum: float = 1e4,
    n_comps: int = 50,
    moments: Moments | None = None,
) -> PreprocessResult:
    """Highly variable genes and PCA of the cells in ``keep`` (QC-passed), out of core.

    ``moments`` (batch code -> per-gene moments of the kept cells' raw counts, as the qc
    stage records them per sample) saves the first pass over the cohort.
    """
    seconds: dict[str, float] = {}
    x = cohort.X
    bounds = np.concatenate([[0], np.cumsum(x.chunks[0])])
    blocks = list(x.to_delayed().ravel())
    batch_cat = pd.Categorical(cohort.obs[batch_key].astype(str))
    batch = batch_cat.codes.astype(np.int64)
    n_batches = len(batch_cat.categories)
    sl = [slice(bounds[i], bounds[i + 1]) for i in range(len(blocks))]

    t = time.perf_counter()
    if moments is None:
        parts = [
            dask.delayed(batch_moments)(b, batch[s], keep[s])
            for b, s in zip(blocks, sl, strict=True)
        ]
        moments = client.compute(_tree_sum(parts, add_moments), sync=True)
    reg_std, clip = clip_values(moments, n_batches, span)
    clip_f = client.scatter(clip, broadcast=True)
    parts = [
        dask.delayed(clipped_moments)(b, batch[s], keep[s], clip_f)
        for b, s in zip(blocks, sl, strict=True)
    ]
    clipped = client.compute(_tree_sum(parts, add_moments), sync=True)
    table = seurat_v3_table(moments, clipped, reg_std, cohort.var_names, n_top_genes)
    seconds["hvg"] = time.perf_counter() - t

    t = time.perf_counter()
    hvg = np.flatnonzero(table["highly_variable"].to_numpy())
    parts = [
        dask.delayed(gram)(b, keep[s], hvg, total_counts[s], target_sum)
        for b, s in zip(blocks, sl, strict=True)
    ]
    n, sums, g = client.compute(_tree_sum(parts, add_gram), sync=True)
    mean, components, variance, ratio = pca_from_gram(n, sums, g, n_comps)
    parts = [
        dask.delayed(project)(b, keep[s], hvg, total_counts[s], target_sum, mean, components)
        for b, s in zip(blocks, sl, strict=True)
    ]
    scores = np.vstack(client.compute(parts, sync=True))
    seconds["pca"] = time.perf_counter() - t
    # the centre of the log-normalized HVGs: new cells are projected with it (add-batch)
    table["pca_mean"] = np.nan
    table.iloc[hvg, table.columns.get_loc("pca_mean")] = mean
    return PreprocessResult(
        var=table,
        pca=scores,
        components=components,
        variance=variance,
        variance_ratio=ratio,
        seconds=seconds,
    )
