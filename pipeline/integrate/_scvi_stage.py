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

from ..cohort import cell_chunks
from ..config import IntegrateConfig
from ..sampling import stratified_sample
from ._scvi import SavedModel, ScviTraining, encode_scvi, train_scvi


@dataclass(frozen=True)
class ScviResult:
    latent: np.ndarray  # cells x n_latent float32; NaN for cells not kept
    training: ScviTraining
    model: SavedModel
    seconds: dict[str, float]


def _rows_cols(block: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(block)[rows][:, cols]


def _encode_block(
    block: sp.spmatrix, keep: np.ndarray, batch: np.ndarray, cols: np.ndarray, model: SavedModel
) -> np.ndarray:
    out = np.full((keep.size, 0), np.nan, dtype=np.float32)
    if keep.any():
        latent = encode_scvi(sp.csr_matrix(block)[keep][:, cols], batch[keep], model)
        out = np.full((keep.size, latent.shape[1]), np.nan, dtype=np.float32)
        out[keep] = latent
    return out


def encode_cells(
    cells: ad.AnnData,
    *,
    client: Client,
    keep: np.ndarray,
    batch: np.ndarray,
    hvg: np.ndarray,
    model: SavedModel,
    n_latent: int,
) -> np.ndarray:
    """The latent means (cells x ``n_latent``, float32; NaN for cells not in ``keep``) of
    a lazy view's cells under the saved scVI ``model``, one task per chunk (each worker
    loads it once; its files are checked against their recorded hashes first, here and
    in every task)."""
    model.check()
    shared = client.scatter(model, broadcast=True, hash=False)
    chunks = cell_chunks(cells.X)
    parts = [
        dask.delayed(_encode_block)(c.block, keep[c.rows], batch[c.rows], hvg, shared)
        for c in chunks
    ]
    latent = np.full((keep.size, n_latent), np.nan, dtype=np.float32)
    for part, c in zip(client.compute(parts, sync=True), chunks, strict=True):
        if part.shape[1]:
            latent[c.rows] = part
    return latent


def scvi_cohort(
    cohort: ad.AnnData,
    *,
    client: Client,
    keep: np.ndarray,
    batch: np.ndarray,
    hvg: np.ndarray,
    model_dir: Path,
    params: IntegrateConfig,
) -> ScviResult:
    """Train scVI on at most ``params.scvi_max_cells`` kept cells (stratified by sample)
    and encode every kept cell of the lazy ``cohort`` on the cluster. The model is saved
    to ``model_dir`` (written under a temporary name, then renamed)."""
    seconds: dict[str, float] = {}
    chunks = cell_chunks(cohort.X)
    sample = cohort.obs["sample_id"].astype(str).to_numpy()

    t = time.perf_counter()
    kept = np.flatnonzero(keep)
    train = kept[stratified_sample(sample[kept], params.scvi_max_cells, params.seed)]
    in_train = np.zeros(keep.size, dtype=bool)
    in_train[train] = True
    parts = [
        dask.delayed(_rows_cols)(c.block, np.flatnonzero(in_train[c.rows]), hvg)
        for c in chunks
        if in_train[c.rows].any()
    ]
    counts = sp.vstack(client.compute(parts, sync=True), format="csr")
    seconds["read_subsample"] = time.perf_counter() - t

    t = time.perf_counter()
    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    training = train_scvi(
        counts, batch[train], tmp, n_latent=params.scvi_n_latent,
        max_epochs=params.scvi_max_epochs, batch_size=params.scvi_batch_size, seed=params.seed,
        kl_warmup_epochs=params.scvi_kl_warmup_epochs,
    )  # fmt: skip
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    model = SavedModel.of(model_dir)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    latent = encode_cells(
        cohort, client=client, keep=keep, batch=batch, hvg=hvg, model=model,
        n_latent=params.scvi_n_latent,
    )  # fmt: skip
    seconds["encode"] = time.perf_counter() - t
    return ScviResult(
        latent=latent,
        training=ScviTraining(model_dir, training.n_cells, training.n_epochs, training.history),
        model=model,
        seconds=seconds,
    )
