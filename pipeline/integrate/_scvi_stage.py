"""scVI over the cohort: read a stratified subsample's HVG counts, train in the driver,
encode every chunk of the lazy cohort in Dask tasks."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import dask
import numpy as np
import scipy.sparse as sp
from distributed import Client

from ._scvi import ScviTraining, encode_scvi, train_scvi


@dataclass(frozen=True)
class ScviResult:
    latent: np.ndarray  # cells x n_latent float32; NaN for cells not kept
    training: ScviTraining
    seconds: dict[str, float]


def stratified_sample(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted positions of about ``size`` items, each group drawn in proportion to its
    size (at least one per group); all positions when ``size`` >= the number of items."""
    n = groups.size
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        take = min(members.size, max(1, round(size * members.size / n)))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def _rows_cols(block: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(block)[rows][:, cols]


def encode_block(
    block: sp.spmatrix, keep: np.ndarray, batch: np.ndarray, cols: np.ndarray, model_dir: Path
) -> np.ndarray:
    out = np.full((keep.size, 0), np.nan, dtype=np.float32)
    if keep.any():
        latent = encode_scvi(sp.csr_matrix(block)[keep][:, cols], batch[keep], model_dir)
        out = np.full((keep.size, latent.shape[1]), np.nan, dtype=np.float32)
        out[keep] = latent
    return out


def scvi_cohort(
    cohort: ad.AnnData,
    *,
    client: Client,
    keep: np.ndarray,
    batch: np.ndarray,
    hvg: np.ndarray,
    model_dir: Path,
    max_cells: int = 50_000,
    n_latent: int = 10,
    max_epochs: int = 100,
    batch_size: int = 128,
    seed: int = 0,
) -> ScviResult:
    """Train scVI on at most ``max_cells`` kept cells (stratified by sample) and encode
    every kept cell of the lazy ``cohort`` on the cluster. The model is saved to
    ``model_dir`` (written under a temporary name, then renamed)."""
    seconds: dict[str, float] = {}
    x = cohort.X
    bounds = np.concatenate([[0], np.cumsum(x.chunks[0])])
    blocks = list(x.to_delayed().ravel())
    sample = cohort.obs["sample_id"].astype(str).to_numpy()

    t = time.perf_counter()
    kept = np.flatnonzero(keep)
    train = kept[stratified_sample(sample[kept], max_cells, seed)]
    in_train = np.zeros(keep.size, dtype=bool)
    in_train[train] = True
    parts = [
        dask.delayed(_rows_cols)(b, np.flatnonzero(in_train[lo:hi]), hvg)
        for b, lo, hi in zip(blocks, bounds[:-1], bounds[1:], strict=True)
        if in_train[lo:hi].any()
    ]
    counts = sp.vstack(client.compute(parts, sync=True), format="csr")
    seconds["read_subsample"] = time.perf_counter() - t

    t = time.perf_counter()
    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    training = train_scvi(
        counts, batch[train], tmp, n_latent=n_latent, max_epochs=max_epochs,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    model = client.scatter(model_dir, broadcast=True)
    parts = [
        dask.delayed(encode_block)(b, keep[lo:hi], batch[lo:hi], hvg, model)
        for b, lo, hi in zip(blocks, bounds[:-1], bounds[1:], strict=True)
    ]
    encoded = client.compute(parts, sync=True)
    latent = np.full((keep.size, n_latent), np.nan, dtype=np.float32)
    for part, lo, hi in zip(encoded, bounds[:-1], bounds[1:], strict=True):
        if part.shape[1]:
            latent[lo:hi] = part
    seconds["encode"] = time.perf_counter() - t
    return ScviResult(
        latent=latent,
        training=ScviTraining(model_dir, training.n_cells, training.n_epochs, training.history),
        seconds=seconds,
    )
