"""Small count matrices in every input format, and samplesheets, for the ingest tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from pipeline.simulate._writers import write_10x_h5, write_10x_mtx

FORMATS = ("mtx", "mtx_v2", "h5", "h5ad", "zarr")


def random_counts(seed: int, n_cells: int = 60, n_genes: int = 40) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.negative_binomial(1, 0.6, size=(n_cells, n_genes)).astype(np.int32)
    dense[rng.random(dense.shape) < 0.5] = 0
    return sp.csr_matrix(dense)


def genes(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([f"ENSG{i:011d}" for i in range(n)], dtype=object)
    symbols = np.array([f"GENE{i}" for i in range(n)], dtype=object)
    symbols[0], symbols[1] = "MT-CO1", "CD3E"
    return ids, symbols


def barcodes(n: int, offset: int = 0) -> np.ndarray:
    return np.array([f"BC{i + offset:06d}-1" for i in range(n)], dtype=object)


def write_input(
    folder: Path,
    name: str,
    fmt: str,
    counts: sp.spmatrix,
    cells: np.ndarray,
    gene_ids: np.ndarray,
    symbols: np.ndarray,
) -> Path:
    """Write ``counts`` (cells x genes) in format ``fmt``; return the path for the sheet."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = sp.csr_matrix(counts)
    if fmt == "mtx":
        path = folder / name
        write_10x_mtx(path, counts, cells, gene_ids, symbols)
    elif fmt == "mtx_v2":  # Cell Ranger 2: genes.tsv with two columns, nothing gzipped
        path = folder / name
        path.mkdir()
        scipy.io.mmwrite(path / "matrix.mtx", counts.T.tocoo(), field="integer")
        pd.DataFrame({"id": gene_ids, "name": symbols}).to_csv(
            path / "genes.tsv", sep="\t", header=False, index=False
        )
        pd.Series(cells).to_csv(path / "barcodes.tsv", header=False, index=False)
    elif fmt == "h5":
        path = folder / f"{name}.h5"
        write_10x_h5(path, counts, cells, gene_ids, symbols)
    elif fmt in ("h5ad", "zarr"):
        adata = ad.AnnData(
            X=counts,
            obs=pd.DataFrame(index=pd.Index(cells.astype(str))),
            var=pd.DataFrame(
                {"gene_ids": gene_ids.astype(str)}, index=pd.Index(symbols.astype(str))
            ),
        )
        if fmt == "h5ad":
            path = folder / f"{name}.h5ad"
            adata.write_h5ad(path)
        else:
            path = folder / f"{name}.zarr"
            adata.write_zarr(path)
    else:
        raise ValueError(fmt)
    return path


def write_sheet(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def sheet_row(sample_id: str, rel_path: str, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "sample_id": sample_id,
        "patient_id": extra.pop("patient_id", f"P_{sample_id}"),
        "timepoint_months": extra.pop("timepoint_months", 0),
        "response": extra.pop("response", "responder"),
        "batch": extra.pop("batch", "b1"),
        "path": rel_path,
    }
    row.update(extra)
    return row


def gzip_file(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    with path.open("rb") as src, gzip.open(out, "wb") as dst:
        dst.write(src.read())
    path.unlink()
    return out
