"""The lazy cohort view: all sample stores as one AnnData, X a Dask array by cells; and
the iteration over its chunks that every stage's tasks use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .errors import ImmunoprofileError, StoreError
from .store import LazyCategorical, LazyColumn
from .workdir import IngestRecord, Workdir

CHUNK_CELLS = 10_000  # the config's ingest.chunk_cells default (a test keeps them equal)
REPEAT_CHUNK_ROWS = 2**20  # cells per task of a per-sample value repeated over cells


@dataclass(frozen=True)
class CellChunk:
    """One chunk of a cohort view's X: a delayed CSR block and its cells' positions."""

    block: Any  # dask.delayed: the chunk's counts (CSR, all genes)
    start: int
    stop: int

    @property
    def rows(self) -> slice:
        """The chunk's cells as a slice of the cohort's (for per-cell arrays)."""
        return slice(self.start, self.stop)


def cell_chunks(x: da.Array) -> list[CellChunk]:
    """The chunks of a cells x genes Dask array chunked along cells only, in order."""
    if len(x.chunks[1]) != 1:
        msg = f"expected a Dask array chunked along cells only, got {len(x.chunks[1])} gene chunks"
        raise ValueError(msg)
    bounds = np.concatenate([[0], np.cumsum(x.chunks[0])]).astype(int)
    return [
        CellChunk(block, int(start), int(stop))
        for block, start, stop in zip(x.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True)
    ]


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
    ``genes`` None when the store's genes are the cohort's)."""
    try:
        group = zarr.open_group(str(path), mode="r")
        cols = _cohort_columns(group, path, genes)
        x = sp.csr_matrix(ad.io.read_elem(group["X"]))
    except ImmunoprofileError:
        raise
    except Exception as exc:  # a damaged or missing chunk: name the sample's store
        msg = (
            f"sample store {path} could not be read ({type(exc).__name__}: {exc}); "
            "`immunoprofile validate WORKDIR` checks every store"
        )
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


def cohort_var(record: IngestRecord) -> pd.DataFrame:
    """The cohort's genes: gene IDs as index, a ``gene_symbols`` column."""
    genes = pd.Index(record.genes)
    return pd.DataFrame(
        {"gene_symbols": np.asarray(record.gene_symbols, dtype=object)}, index=genes
    )


@dataclass
class CellCounts:
    """The cohort's raw counts without per-cell names: what `open_counts` returns.

    The attributes a stage reads of a lazily opened AnnData (``X``, ``obs``, ``var``,
    ``var_names``, ``uns``), with ``obs`` indexed by position (a `pandas.RangeIndex`):
    an AnnData insists on text cell names, which at 4M cells are 0.33 GiB of Python
    strings in the process that opens the counts (docs/benchmarks.md, session 29).
    A stage adds the columns it needs to ``obs`` (a categorical keeps one code per cell).
    """

    X: da.Array
    obs: pd.DataFrame
    var: pd.DataFrame
    uns: dict[str, Any]

    def __post_init__(self) -> None:
        if len(self.obs) != self.X.shape[0] or len(self.var) != self.X.shape[1]:
            msg = (
                f"CellCounts: obs has {len(self.obs)} rows and var {len(self.var)} for X of "
                f"shape {self.X.shape}; expected one obs row per cell and one var row per gene"
            )
            raise ValueError(msg)

    @property
    def var_names(self) -> pd.Index:
        """The genes (var's index)."""
        return self.var.index

    @property
    def n_obs(self) -> int:
        """The number of cells."""
        return int(self.X.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(cells, genes)."""
        return int(self.X.shape[0]), int(self.X.shape[1])


# a stage's counts: `open_counts`' view, or an AnnData with a Dask X (`open_cohort`'s)
Counts = CellCounts | ad.AnnData


def open_counts(
    workdir: str | Path | Workdir,
    *,
    chunk_cells: int = CHUNK_CELLS,
    samples: list[str] | None = None,
) -> CellCounts:
    """`open_cohort` without the cells' metadata: X and var as there, obs only the
    ``sample_id`` (categorical) of each cell, indexed by position (`CellCounts`).

    For stages that need the counts but not the cell names and barcodes, which at the
    study's size are ~0.25 GiB of Python strings in the process that opens the cohort.
    ``samples`` (a batch's) opens those stores instead, over the cohort's genes.
    """
    workdir = Workdir(workdir)
    record = workdir.ingest_record()
    var = cohort_var(record)
    per_sample = None if record.uniform_genes and samples is None else pd.Index(var.index)
    samples = list(record.samples) if samples is None else list(samples)
    parts = [
        _lazy_sample(workdir.sample_store(s), per_sample, chunk_cells, with_obs=False)[0]
        for s in samples
    ]
    sizes = [int(x.shape[0]) for x in parts]
    codes = np.repeat(np.arange(len(samples), dtype=np.int32), sizes)
    obs = pd.DataFrame({"sample_id": pd.Categorical.from_codes(codes, categories=samples)})
    x = da.concatenate(parts, axis=0)
    return CellCounts(X=x, obs=obs, var=var, uns={"uniform_genes": per_sample is None})


def _cohort_dtypes(obs: pd.DataFrame) -> pd.DataFrame:
    """The cohort's obs types: every non-numeric column but the barcodes categorical,
    its categories the values as text, sorted."""
    for col in obs.columns:
        if col != "barcode" and not pd.api.types.is_numeric_dtype(obs[col]):
            obs[col] = obs[col].astype(str).astype("category")
    return obs


def _sample_metadata(path: Path) -> pd.DataFrame:
    """A sample store's metadata (its obs columns but the barcode; one value per sample, as
    ingest writes them) as one row, with its number of cells as ``_n_cells``."""
    group = zarr.open_group(str(path), mode="r")
    attrs = group["obs"].attrs
    columns = [str(c) for c in cast(list, attrs["column-order"]) if c != "barcode"]
    # the columns alone: the cell names and barcodes (text) are what reading costs
    n_cells = int(cast(zarr.Array, group[f"obs/{attrs['_index']}"]).shape[0])
    meta = pd.DataFrame(
        {c: ad.io.read_elem(group[f"obs/{c}"]) for c in columns},
        index=pd.RangeIndex(n_cells),
    )
    varying = [c for c in meta.columns if meta[c].nunique(dropna=False) > 1]
    if varying:
        msg = (
            f"{path}: obs column(s) {varying} vary within the sample; expected one value per "
            "sample (the samplesheet's, as ingest writes them): re-ingest the sample"
        )
        raise StoreError(msg)
    return meta.iloc[:1].reset_index(drop=True).assign(_n_cells=n_cells)


def _sample_names(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A sample store's cell names and barcodes (its obs' two text arrays alone)."""
    group = zarr.open_group(str(path), mode="r")
    index = group[f"obs/{group['obs'].attrs['_index']}"]
    names, barcodes = ad.io.read_elem(index), ad.io.read_elem(group["obs/barcode"])
    return np.asarray(names, dtype=object), np.asarray(barcodes, dtype=object)


def lazy_cohort_obs(
    workdir: str | Path | Workdir, *, samples: list[str] | None = None
) -> tuple[da.Array, dict[str, LazyColumn]]:
    """`open_cohort`'s cell names and obs columns (the same values and types) as Dask
    arrays read by tasks from the sample stores, for stages that write them without
    holding them: the driver computes only each sample's metadata (one row per sample)."""
    workdir = Workdir(workdir)
    samples = list(workdir.ingest_record().samples) if samples is None else list(samples)
    paths = [workdir.sample_store(s) for s in samples]
    rows = dask.compute(*[dask.delayed(_sample_metadata)(p) for p in paths])
    meta = _cohort_dtypes(pd.concat(rows, ignore_index=True))
    sizes = meta.pop("_n_cells").to_numpy(dtype=np.int64)
    strings = [dask.delayed(_sample_names, nout=2, pure=True)(p) for p in paths]
    names = da.concatenate(
        [
            da.from_delayed(t[0], shape=(int(n),), dtype=object)
            for t, n in zip(strings, sizes, strict=True)
        ]
    )
    columns: dict[str, LazyColumn] = {
        "barcode": da.concatenate(
            [
                da.from_delayed(t[1], shape=(int(n),), dtype=object)
                for t, n in zip(strings, sizes, strict=True)
            ]
        )
    }
    for col in meta.columns:
        values = meta[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = repeat_per_sample(values.cat.codes.to_numpy(), sizes, REPEAT_CHUNK_ROWS)
            columns[col] = LazyCategorical(codes, values.cat.categories)
        else:
            columns[col] = repeat_per_sample(values.to_numpy(), sizes, REPEAT_CHUNK_ROWS)
    return names, columns


def _repeat_rows(positions: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return values[np.searchsorted(ends, positions, side="right")]


def repeat_per_sample(values: np.ndarray, sizes: np.ndarray, chunk_rows: int) -> da.Array:
    """Each sample's value repeated over its cells (``values[i]`` ``sizes[i]`` times), as a
    Dask array computed a chunk of ``chunk_rows`` cells per task: the graph holds the
    per-sample values only, and its size does not grow with the number of samples."""
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
    n = int(ends[-1]) if ends.size else 0
    positions = da.arange(n, chunks=chunk_rows, dtype=np.int64)
    return positions.map_blocks(_repeat_rows, values, ends, dtype=values.dtype)


def open_cohort(
    workdir: str | Path | Workdir,
    *,
    chunk_cells: int = CHUNK_CELLS,
    samples: list[str] | None = None,
) -> ad.AnnData:
    """Open every ingested sample as one AnnData without copying any counts.

    ``X`` is a Dask array of CSR chunks (at most ``chunk_cells`` cells each, all genes),
    read lazily from ``samples/<sample_id>.zarr`` in samplesheet order; ``obs`` holds all
    cells' metadata (index ``<sample_id>:<barcode>``); ``var`` the cohort's genes (gene IDs
    as index, ``gene_symbols`` column), the intersection when ingest used that policy.
    ``samples`` (e.g. a batch's, see `pipeline.add_batch`) opens those stores instead,
    over the same genes.
    """
    workdir = Workdir(workdir)
    record = workdir.ingest_record()
    var = cohort_var(record)
    genes = pd.Index(var.index)
    per_sample = None if record.uniform_genes and samples is None else genes
    parts = [
        _lazy_sample(workdir.sample_store(s), per_sample, chunk_cells)
        for s in (record.samples if samples is None else samples)
    ]
    x = da.concatenate([p[0] for p in parts], axis=0)
    obs = _cohort_dtypes(pd.concat([p[1] for p in parts]))
    return ad.AnnData(X=x, obs=obs, var=var, uns={"uniform_genes": per_sample is None})
