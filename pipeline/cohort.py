"""The lazy cohort view: all sample stores as one AnnData, X a Dask array by cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .errors import ImmunoprofileError, StoreError
from .ingest import STAGE_RECORD, sample_store_path


def _cohort_columns(group: zarr.Group, path: Path, genes: pd.Index | None) -> np.ndarray | None:
    """Positions of the cohort's genes among the sample's; None when they are the same
    (``genes`` None: ingest found every sample's gene list identical)."""
    if genes is None:
        return None
    var_names = pd.Index(ad.io.read_elem(group["var"]).index.astype(str))
    if var_names.equals(genes):
        return None
    cols = var_names.get_indexer(genes)
    if (cols < 0).any():
        msg = f"{path}: lacks {int((cols < 0).sum())} of the cohort's genes"
        raise ImmunoprofileError(msg)
    return cols


def read_sample_counts(path: Path, genes: pd.Index | None) -> sp.csr_matrix:
    """One sample's raw counts, whole, as CSR over the cohort's ``genes`` (a task's read;
    ``genes`` None when the store's genes are the cohort's, see `sample_genes`)."""
    try:
        group = zarr.open_group(str(path), mode="r")
        cols = _cohort_columns(group, path, genes)
        x = sp.csr_matrix(ad.io.read_elem(group["X"]))
    except ImmunoprofileError:
        raise
    except Exception as exc:  # a damaged or missing chunk: name the sample's store
        msg = (f"sample store {path} could not be read ({type(exc).__name__}: {exc}); "
               "`immunoprofile validate WORKDIR` checks every store")  # fmt: skip
        raise StoreError(msg) from exc
    return x if cols is None else x[:, cols]


def _lazy_sample(
    path: Path, genes: pd.Index | None, chunk_cells: int, *, with_obs: bool = True
) -> tuple[da.Array, pd.DataFrame | None]:
    group = zarr.open_group(str(path), mode="r")
    obs = ad.io.read_elem(group["obs"]) if with_obs else None
    cols = _cohort_columns(group, path, genes)
    n_genes = int(cast(list[int], group["X"].attrs["shape"])[1])
    x = ad.experimental.read_elem_lazy(group["X"], chunks=(chunk_cells, n_genes))
    if cols is not None:
        x = x.map_blocks(
            lambda b, c=cols: b[:, c], chunks=(x.chunks[0], (len(cols),)), meta=x._meta
        )
    return x, obs


def _stage_record(workdir: Path) -> dict:
    try:
        return json.loads((workdir / STAGE_RECORD).read_text())
    except FileNotFoundError:
        msg = f"{workdir} has no {STAGE_RECORD}: run the ingest stage first"
        raise ImmunoprofileError(msg) from None


def _cohort_var(record: dict) -> pd.DataFrame:
    genes = pd.Index(record["genes"])
    return pd.DataFrame(
        {"gene_symbols": np.asarray(record["gene_symbols"], dtype=object)}, index=genes
    )


def open_counts(workdir: str | Path, *, chunk_cells: int = 10_000) -> ad.AnnData:
    """`open_cohort` without the cells' metadata: X and var as there, obs only the
    ``sample_id`` (categorical) of each cell, indexed by position ("0", "1", ...).

    For stages that need the counts but not the cell names and barcodes, which at the
    study's size are ~0.25 GiB of Python strings in the process that opens the cohort.
    """
    workdir = Path(workdir)
    record = _stage_record(workdir)
    var = _cohort_var(record)
    per_sample = None if record.get("uniform_genes") else pd.Index(var.index)
    samples = list(record["samples"])
    parts = [
        _lazy_sample(sample_store_path(workdir, s), per_sample, chunk_cells, with_obs=False)[0]
        for s in samples
    ]
    sizes = [int(x.shape[0]) for x in parts]
    codes = np.repeat(np.arange(len(samples), dtype=np.int32), sizes)
    obs = pd.DataFrame(
        {"sample_id": pd.Categorical.from_codes(codes, categories=samples)},
        index=pd.RangeIndex(int(codes.size)).astype(str),
    )
    x = da.concatenate(parts, axis=0)
    return ad.AnnData(X=x, obs=obs, var=var, uns={"uniform_genes": per_sample is None})


def open_cohort(
    workdir: str | Path, *, chunk_cells: int = 10_000, samples: list[str] | None = None
) -> ad.AnnData:
    """Open every ingested sample as one AnnData without copying any counts.

    ``X`` is a Dask array of CSR chunks (at most ``chunk_cells`` cells each, all genes),
    read lazily from ``samples/<sample_id>.zarr`` in samplesheet order; ``obs`` holds all
    cells' metadata (index ``<sample_id>:<barcode>``); ``var`` the cohort's genes (gene IDs
    as index, ``gene_symbols`` column), the intersection when ingest used that policy.
    ``samples`` (e.g. a batch's, see `pipeline.batches`) opens those stores instead, over
    the same genes.
    """
    workdir = Path(workdir)
    record = _stage_record(workdir)
    var = _cohort_var(record)
    genes = pd.Index(var.index)
    per_sample = None if record.get("uniform_genes") and samples is None else genes
    parts = [
        _lazy_sample(sample_store_path(workdir, s), per_sample, chunk_cells)
        for s in (record["samples"] if samples is None else samples)
    ]
    x = da.concatenate([p[0] for p in parts], axis=0)
    obs = pd.concat([p[1] for p in parts])
    for col in obs.columns:
        if col != "barcode" and not pd.api.types.is_numeric_dtype(obs[col]):
            obs[col] = obs[col].astype(str).astype("category")
    return ad.AnnData(X=x, obs=obs, var=var, uns={"uniform_genes": per_sample is None})
