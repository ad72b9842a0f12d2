"""The lazy cohort view: all sample stores as one AnnData, X a Dask array by cells."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import zarr

from .errors import ImmunoprofileError
from .ingest import STAGE_RECORD, sample_store_path


def _lazy_sample(path: Path, genes: pd.Index, chunk_cells: int) -> tuple[da.Array, pd.DataFrame]:
    group = zarr.open_group(str(path), mode="r")
    obs = ad.io.read_elem(group["obs"])
    var_names = pd.Index(ad.io.read_elem(group["var"]).index.astype(str))
    x = ad.experimental.read_elem_lazy(group["X"], chunks=(chunk_cells, len(var_names)))
    if not var_names.equals(genes):
        cols = var_names.get_indexer(genes)
        if (cols < 0).any():
            msg = f"{path}: lacks {int((cols < 0).sum())} of the cohort's genes"
            raise ImmunoprofileError(msg)
        x = x.map_blocks(
            lambda b, c=cols: b[:, c], chunks=(x.chunks[0], (len(genes),)), meta=x._meta
        )
    return x, obs


def open_cohort(workdir: str | Path, *, chunk_cells: int = 10_000) -> ad.AnnData:
    """Open every ingested sample as one AnnData without copying any counts.

    ``X`` is a Dask array of CSR chunks (at most ``chunk_cells`` cells each, all genes),
    read lazily from ``samples/<sample_id>.zarr`` in samplesheet order; ``obs`` holds all
    cells' metadata (index ``<sample_id>:<barcode>``); ``var`` the cohort's genes (gene IDs
    as index, ``gene_symbols`` column), the intersection when ingest used that policy.
    """
    workdir = Path(workdir)
    try:
        record = json.loads((workdir / STAGE_RECORD).read_text())
    except FileNotFoundError:
        msg = f"{workdir} has no {STAGE_RECORD}: run the ingest stage first"
        raise ImmunoprofileError(msg) from None
    genes = pd.Index(record["genes"])
    parts = [
        _lazy_sample(sample_store_path(workdir, s), genes, chunk_cells) for s in record["samples"]
    ]
    x = da.concatenate([p[0] for p in parts], axis=0)
    obs = pd.concat([p[1] for p in parts])
    for col in obs.columns:
        if col != "barcode" and not pd.api.types.is_numeric_dtype(obs[col]):
            obs[col] = obs[col].astype(str).astype("category")
    var = pd.DataFrame(
        {"gene_symbols": np.asarray(record["gene_symbols"], dtype=object)}, index=genes
    )
    return ad.AnnData(X=x, obs=obs, var=var)
