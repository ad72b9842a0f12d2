"""Per-cell elements of an AnnData-Zarr store written by the tasks that compute them.

A per-cell result of a large cohort (a column of QC metrics, the cells' names, the PCs)
should never be whole in the process that writes the store. Here such a result is a Dask
array; storing it makes every task write its own rows, in zarr chunks of whole rows that
no two tasks share (the array is rechunked to them first), so on a distributed cluster
the workers write straight into the store and the driver only lays out the groups and
their metadata, in anndata's on-disk format (``encoding-type`` attributes, categoricals as
codes and categories), so that ``anndata.read_zarr`` reads the store as any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from ._atomic import atomic_path
from ._manifest import write_manifest

CHUNK_BYTES = 16 * 2**20  # about this much of a lazy array per zarr chunk
TEXT_BYTES = 64  # a string's assumed size when choosing chunk rows


@dataclass(frozen=True)
class LazyCategorical:
    """A categorical column whose codes are a Dask array (categories known in advance)."""

    codes: da.Array  # integer codes into ``categories``; -1 missing
    categories: pd.Index
    ordered: bool = False

    def __len__(self) -> int:
        return int(self.codes.shape[0])


LazyColumn = da.Array | LazyCategorical


@dataclass(frozen=True)
class LazyCSR:
    """A CSR matrix whose three arrays are Dask arrays (e.g. built from blocks of rows)."""

    indptr: da.Array
    indices: da.Array
    data: da.Array
    shape: tuple[int, int]

    def compute(self) -> sp.csr_matrix:
        """The matrix in memory (small data: tests, notebooks)."""
        import dask

        indptr, indices, data = dask.compute(self.indptr, self.indices, self.data)
        return sp.csr_matrix((data, indices, indptr), shape=self.shape)


def _chunk_rows(value: da.Array) -> int:
    kind = value.dtype.kind
    size = TEXT_BYTES if kind in "OUT" else value.dtype.itemsize
    row = int(np.prod(value.shape[1:], dtype=np.int64)) * size
    return max(1, min(int(value.shape[0]), CHUNK_BYTES // max(1, row)))


def _lazy_target(parent: zarr.Group, name: str, value: da.Array) -> tuple[da.Array, zarr.Array]:
    """Create the zarr array ``name`` for ``value`` (strings as anndata's string arrays)
    and rechunk ``value`` to its chunks."""
    chunks = (_chunk_rows(value), *(int(n) for n in value.shape[1:]))
    text = value.dtype.kind in "OUT"
    arr = parent.create_array(
        name, shape=value.shape, dtype=str if text else value.dtype, chunks=chunks
    )
    encoding = "string-array" if text else "array"
    arr.attrs.update({"encoding-type": encoding, "encoding-version": "0.2.0"})
    return value.rechunk(chunks), arr


def store_lazy(pairs: list[tuple[da.Array, zarr.Array]]) -> None:
    """Compute and write every (value, target) pair in one graph (tasks shared by several
    values run once); on a distributed cluster, when its client is the default."""
    if pairs:
        sources, targets = zip(*pairs, strict=True)
        da.store(list(sources), list(targets), lock=False)


def write_lazy_array(parent: zarr.Group, name: str, value: da.Array) -> zarr.Array:
    """Write a Dask array (cells x ...) as the AnnData array ``name`` of ``parent``."""
    source, arr = _lazy_target(parent, name, value)
    store_lazy([(source, arr)])
    return arr


def write_lazy_csr(parent: zarr.Group, name: str, value: LazyCSR) -> zarr.Group:
    """Write a `LazyCSR` as the AnnData sparse matrix ``name`` of ``parent`` (anndata's
    ``csr_matrix`` encoding), its arrays written by their tasks."""
    group = parent.create_group(name)
    group.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": list(value.shape)}
    )
    store_lazy(
        [_lazy_target(group, key, getattr(value, key)) for key in ("data", "indices", "indptr")]
    )
    return group


def _column_targets(
    parent: zarr.Group, name: str, column: LazyColumn
) -> list[tuple[da.Array, zarr.Array]]:
    if isinstance(column, LazyCategorical):
        group = parent.create_group(name)
        group.attrs.update(
            {
                "ordered": bool(column.ordered),
                "encoding-type": "categorical",
                "encoding-version": "0.2.0",
            }
        )
        categories = column.categories.to_numpy()
        with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            ad.io.write_elem(group, "categories", categories)
        return [_lazy_target(group, "codes", column.codes)]
    return [_lazy_target(parent, name, column)]


def write_lazy_obs(group: zarr.Group, names: da.Array, columns: Mapping[str, LazyColumn]) -> None:
    """The obs frame of the AnnData store ``group``: cell names ``names`` and the
    ``columns`` in their order, all written by the tasks in one graph."""
    n = int(names.shape[0])
    wrong = [c for c, v in columns.items() if len(v) != n]
    if wrong:
        msg = f"obs column(s) {wrong} do not have one value per cell ({n} names)"
        raise ValueError(msg)
    if "_index" in columns:
        msg = "obs column '_index' cannot be written: anndata reserves that name"
        raise ValueError(msg)
    obs = group.create_group("obs")
    obs.attrs.update(
        {
            "_index": "_index",
            "column-order": list(columns),
            "encoding-type": "dataframe",
            "encoding-version": "0.2.0",
        }
    )
    pairs = [_lazy_target(obs, "_index", names)]
    for name, column in columns.items():
        pairs += _column_targets(obs, name, column)
    store_lazy(pairs)


def write_lazy_anndata_store(
    target: Path,
    info: dict[str, Any],
    *,
    names: da.Array,
    obs: Mapping[str, LazyColumn],
    var: pd.DataFrame,
    varm: Mapping[str, np.ndarray] | None = None,
    uns: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an AnnData store without X whose obs is lazy (`write_lazy_obs`) and whose
    var, varm and uns are in memory, under a temporary name; add the manifest (``info``
    and every array's checksum, read in slabs) and rename it into place."""
    with atomic_path(target) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        write_lazy_obs(group, names, obs)
        with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            ad.io.write_elem(group, "var", var)
            ad.io.write_elem(group, "varm", dict(varm or {}))
            for slot in ("obsm", "obsp", "varp", "layers"):
                ad.io.write_elem(group, slot, {})
            ad.io.write_elem(group, "uns", dict(uns or {}))
        manifest = write_manifest(tmp, info)
    return manifest
