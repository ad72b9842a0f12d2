"""One sample: read, check and write its AnnData-Zarr store (a pure, idempotent task)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import __version__
from ..stages import get_stage
from ..store import json_sha256, read_manifest, write_anndata_store
from ._checks import barcode_problems, count_problems, gene_id_problems
from ._readers import FORMAT_NAMES, Header, hash_input, read_counts, read_header
from ._samplesheet import SampleRow, input_format

# Elements per chunk of X/data and X/indices (1 MiB of int32 before compression).
STORE_CHUNK = 1 << 18
# The ingest stage's version in the registry is the store layout's: bump it when the
# layout changes and stores are rebuilt. (Format 1: X's arrays with zarr's default zstd;
# format 2: LZ4 with byte shuffle, ~6x faster to decode.)
STORE_FORMAT = get_stage("ingest").version


def sample_parameters(row: SampleRow) -> dict[str, Any]:
    """Everything besides the input files that determines a sample's store."""
    return {
        "sample_id": row.sample_id,
        "metadata": row.metadata,
        "store_chunk": STORE_CHUNK,
        "store_format": STORE_FORMAT,
    }


def sample_header(row: SampleRow) -> Header:
    """The sample's genes and shape; unreadable files become problems, not exceptions."""
    try:
        return read_header(row.path)
    except Exception as exc:
        fmt = FORMAT_NAMES.get(input_format(row.path) or "", "count matrix")
        problem = f"cannot read {row.path} as {fmt} ({type(exc).__name__}: {exc})"
        return Header(fmt, 0, (), (), (problem,))


@dataclass(frozen=True)
class HeaderSummary:
    """What the driver needs of a sample's header: no per-gene lists."""

    n_cells: int
    n_genes: int
    genes_sha256: str
    problems: tuple[str, ...]


def summarize_header(row: SampleRow) -> HeaderSummary:
    header = sample_header(row)
    digest = hashlib.sha256("\n".join(header.gene_ids).encode()).hexdigest()
    return HeaderSummary(header.n_cells, len(header.gene_ids), digest, header.problems)


def _obs(row: SampleRow, barcodes: pd.Index) -> pd.DataFrame:
    obs = pd.DataFrame(
        {"barcode": barcodes.astype(str)},
        index=pd.Index([f"{row.sample_id}:{b}" for b in barcodes], name=None),
    )
    for key, value in row.metadata.items():
        obs[key] = value
    for col in obs.columns:
        if col != "barcode" and obs[col].dtype == object:
            obs[col] = obs[col].astype(str).astype("category")
    return obs


def _built_from(
    manifest: dict[str, Any] | None, inputs: dict[str, str], params: dict[str, Any]
) -> bool:
    return (
        manifest is not None
        and manifest.get("inputs", {}).get("sha256") == inputs
        and manifest.get("parameters_sha256") == json_sha256(params)
    )


def store_is_current(row: SampleRow, target: Path) -> bool:
    """``target`` is a complete store built from exactly this row's input and metadata."""
    existing = read_manifest(target) if target.exists() else None
    return existing is not None and _built_from(
        existing, hash_input(row.path), sample_parameters(row)
    )


def ingest_sample(row: SampleRow, *, target: Path) -> dict[str, Any]:
    """Build ``target`` from the sample's input unless it is complete and unchanged.

    Returns {'sample_id', 'status': 'unchanged' | 'written' | 'failed', 'problems',
    'n_obs', 'nnz', 'count_sum'}; a failed sample leaves ``target`` as it was.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"sample_id": row.sample_id, "problems": []}
    inputs = hash_input(row.path)
    params = sample_parameters(row)
    existing = read_manifest(target) if target.exists() else None
    if existing is not None and _built_from(existing, inputs, params):
        return {
            **result,
            "status": "unchanged",
            **{k: existing[k] for k in ("n_obs", "nnz", "count_sum")},
        }

    fmt = input_format(row.path) or "?"
    try:
        adata = read_counts(row.path)
    except Exception as exc:
        problem = (
            f"cannot read {row.path} as {FORMAT_NAMES.get(fmt, fmt)} ({type(exc).__name__}: {exc})"
        )
        return {**result, "status": "failed", "problems": [problem]}
    x = adata.X
    assert isinstance(x, sp.csr_matrix)
    problems = []
    if adata.n_obs == 0:
        problems.append("no cells")
    problems += count_problems(x)
    problems += barcode_problems(list(adata.obs_names))
    problems += gene_id_problems(list(adata.var_names))
    if problems:
        return {**result, "status": "failed", "problems": [f"{row.path}: {p}" for p in problems]}

    counts = sp.csr_matrix(
        (x.data.astype(np.int32), x.indices.astype(np.int32), x.indptr.astype(np.int64)),
        shape=x.shape,
    )
    counts.sum_duplicates()
    counts.sort_indices()
    store = ad.AnnData(X=counts, obs=_obs(row, adata.obs_names), var=adata.var)
    count_sum = int(counts.data.sum(dtype=np.int64))
    info = {
        "kind": "sample",
        "sample_id": row.sample_id,
        "immunoprofile_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"path": str(row.path), "format": fmt, "sha256": inputs},
        "parameters": params,
        "parameters_sha256": json_sha256(params),
        "n_obs": int(counts.shape[0]),
        "n_vars": int(counts.shape[1]),
        "nnz": int(counts.nnz),
        "count_sum": count_sum,
    }
    write_anndata_store(target, store, info, x_chunk=STORE_CHUNK, lz4=True)
    return {
        **result,
        "status": "written",
        "n_obs": info["n_obs"],
        "nnz": info["nnz"],
        "count_sum": count_sum,
        "seconds": time.perf_counter() - start,
    }
