"""Read one sample's count matrix (10x MTX v2/v3, 10x HDF5, h5ad, AnnData zarr).

`read_header` reads only what the cross-sample checks need (genes, cell count, shapes);
`read_counts` reads the whole matrix. h5ad and zarr go through anndata's readers. The 10x
formats are read here with h5py and scipy.io.mmread rather than scanpy's `read_10x_h5` /
`read_10x_mtx`, which return float32 (exact only below 2**24) and read neither gzipped v2
nor plain v3 MTX folders.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
import zarr

from ._samplesheet import input_format

FORMAT_NAMES = {"mtx": "10x MTX", "h5": "10x HDF5", "h5ad": "h5ad", "zarr": "AnnData zarr"}


@dataclass(frozen=True)
class Header:
    """What a sample's files say about its shape and genes, read without the matrix."""

    format: str
    n_cells: int
    gene_ids: tuple[str, ...]
    gene_symbols: tuple[str, ...]
    problems: tuple[str, ...]  # e.g. a feature table that does not match the matrix


def _first(folder: Path, *names: str) -> Path | None:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return None


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def _mtx_header(folder: Path) -> Header:
    matrix = _first(folder, "matrix.mtx.gz", "matrix.mtx")
    features = _first(folder, "features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
    barcodes = _first(folder, "barcodes.tsv.gz", "barcodes.tsv")
    problems = []
    if features is None:
        problems.append(f"{folder}: no features.tsv[.gz] (v3) or genes.tsv[.gz] (v2)")
    if barcodes is None:
        problems.append(f"{folder}: no barcodes.tsv[.gz]")
    if matrix is None or problems:
        return Header("mtx", 0, (), (), tuple(problems))
    assert features is not None and barcodes is not None
    with _open_text(matrix) as fh:
        line = fh.readline()
        while line.startswith("%"):
            line = fh.readline()
        n_genes, n_cells, _ = (int(x) for x in line.split())
    table = pd.read_csv(features, sep="\t", header=None, dtype=str, keep_default_na=False)
    n_barcodes = sum(1 for _ in _open_text(barcodes))
    if len(table) != n_genes:
        problems.append(
            f"{features.name} has {len(table)} rows but {matrix.name} has {n_genes} genes"
        )
    if n_barcodes != n_cells:
        problems.append(
            f"{barcodes.name} has {n_barcodes} rows but {matrix.name} has {n_cells} cells"
        )
    symbols = table[1] if table.shape[1] > 1 else table[0]
    return Header("mtx", n_cells, tuple(table[0]), tuple(symbols), tuple(problems))


def _h5_header(path: Path) -> Header:
    with h5py.File(path, "r") as f:
        if "matrix" in f:  # Cell Ranger v3
            g = f["matrix"]
            ids, names = g["features/id"][:], g["features/name"][:]
        else:  # Cell Ranger v2: one group per genome
            g = f[next(iter(f.keys()))]
            ids, names = g["genes"][:], g["gene_names"][:]
        n_genes, n_cells = (int(x) for x in g["shape"][:])
        n_barcodes = g["barcodes"].shape[0]
    problems = []
    if len(ids) != n_genes:
        problems.append(f"the feature table has {len(ids)} genes but the matrix has {n_genes}")
    if n_barcodes != n_cells:
        problems.append(f"there are {n_barcodes} barcodes but the matrix has {n_cells} cells")
    decode = lambda a: tuple(x.decode() for x in a)  # noqa: E731
    return Header("h5", n_cells, decode(ids), decode(names), tuple(problems))


def _anndata_var(var: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Gene IDs and symbols of an AnnData var table (IDs in 'gene_ids' if present)."""
    index = var.index.astype(str)
    if "gene_ids" in var.columns:
        return tuple(var["gene_ids"].astype(str)), tuple(index)
    for col in ("gene_symbols", "feature_name", "gene_name"):
        if col in var.columns:
            return tuple(index), tuple(var[col].astype(str))
    return tuple(index), tuple(index)


def _anndata_header(path: Path, fmt: str) -> Header:
    if fmt == "h5ad":
        with h5py.File(path, "r") as f:
            var = ad.io.read_elem(f["var"])
            obs_index = ad.io.read_elem(f["obs"]).index
            x = f["X"]
            shape = tuple(x.attrs["shape"]) if isinstance(x, h5py.Group) else x.shape
    else:
        g = zarr.open_group(str(path), mode="r")
        var = ad.io.read_elem(g["var"])
        obs_index = ad.io.read_elem(g["obs"]).index
        x = g["X"]
        shape = tuple(x.attrs["shape"]) if isinstance(x, zarr.Group) else x.shape  # type: ignore[arg-type]
    ids, symbols = _anndata_var(var)
    problems = []
    if shape[1] != len(ids):
        problems.append(f"var has {len(ids)} genes but X has {shape[1]} columns")
    if shape[0] != len(obs_index):
        problems.append(f"obs has {len(obs_index)} cells but X has {shape[0]} rows")
    return Header(fmt, int(shape[0]), ids, symbols, tuple(problems))


def read_header(path: Path) -> Header:
    """Genes and cell count of the sample at ``path`` without reading its matrix."""
    fmt = input_format(path)
    if fmt == "mtx":
        return _mtx_header(path)
    if fmt == "h5":
        return _h5_header(path)
    if fmt in ("h5ad", "zarr"):
        return _anndata_header(path, fmt)
    msg = f"{path} is not a 10x MTX folder, 10x .h5, .h5ad or AnnData .zarr"
    raise ValueError(msg)


def _read_mtx(folder: Path) -> ad.AnnData:
    """A Cell Ranger v2 or v3 MTX folder, gzipped or not, with integer counts as stored."""
    matrix = _first(folder, "matrix.mtx.gz", "matrix.mtx")
    features = _first(folder, "features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
    barcodes = _first(folder, "barcodes.tsv.gz", "barcodes.tsv")
    if matrix is None or features is None or barcodes is None:
        msg = f"{folder}: needs matrix.mtx[.gz], features.tsv[.gz] or genes.tsv[.gz], barcodes.tsv[.gz]"
        raise FileNotFoundError(msg)
    x = sp.csr_matrix(scipy.io.mmread(str(matrix)).T)
    table = pd.read_csv(features, sep="\t", header=None, dtype=str, keep_default_na=False)
    cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str, keep_default_na=False)[0]
    symbols = table[1] if table.shape[1] > 1 else table[0]
    return ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=pd.Index(cells.to_numpy())),
        var=pd.DataFrame({"gene_symbols": symbols.to_numpy()}, index=pd.Index(table[0].to_numpy())),
    )


def _read_10x_h5(path: Path) -> ad.AnnData:
    """A Cell Ranger v2 or v3 HDF5 matrix with its integer counts as stored."""
    with h5py.File(path, "r") as f:
        if "matrix" in f:
            g = f["matrix"]
            ids, names = g["features/id"][:], g["features/name"][:]
        else:
            g = f[next(iter(f.keys()))]
            ids, names = g["genes"][:], g["gene_names"][:]
        n_genes, n_cells = (int(v) for v in g["shape"][:])
        x = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_cells, n_genes))
        cells = g["barcodes"][:]
    decode = np.vectorize(lambda b: b.decode(), otypes=[object])
    return ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=pd.Index(decode(cells) if len(cells) else [], dtype=object)),
        var=pd.DataFrame({"gene_symbols": decode(names)}, index=pd.Index(decode(ids))),
    )


def read_counts(path: Path) -> ad.AnnData:
    """The sample's counts as cells x genes CSR; var_names are gene IDs, symbols in var.

    obs_names are the input's barcodes; counts keep the input's dtype (checked later).
    """
    fmt = input_format(path)
    if fmt in ("mtx", "h5"):
        adata = _read_mtx(path) if fmt == "mtx" else _read_10x_h5(path)
        symbols = adata.var["gene_symbols"]
    elif fmt in ("h5ad", "zarr"):
        adata = ad.read_h5ad(path) if fmt == "h5ad" else ad.read_zarr(path)
        ids, sym = _anndata_var(adata.var)
        adata = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names.astype(str)))
        adata.var_names = list(ids)
        symbols = pd.Series(sym, index=adata.var_names)
    else:
        msg = f"{path} is not a 10x MTX folder, 10x .h5, .h5ad or AnnData .zarr"
        raise ValueError(msg)
    x = adata.X
    if not sp.issparse(x):
        x = sp.csr_matrix(np.asarray(x))
    out = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame(index=pd.Index(adata.obs_names.astype(str), name=None)),
        var=pd.DataFrame({"gene_symbols": symbols.astype(str).to_numpy()}, index=adata.var_names),
    )
    return out


def hash_input(path: Path) -> dict[str, str]:
    """SHA-256 of every file of the input (a file, or each file under a folder)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digests = {}
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digests[str(f.relative_to(path)) if path.is_dir() else f.name] = h.hexdigest()
    return digests
