"""Writers of 10x-format count matrices; every write is atomic (temporary path, then rename)."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from ..store import atomic_path


def write_10x_h5(
    path: Path,
    counts: sp.csr_matrix,
    barcodes: np.ndarray,
    gene_ids: np.ndarray,
    symbols: np.ndarray,
) -> None:
    """Write a Cell Ranger v3 ``filtered_feature_bc_matrix.h5`` (cells x genes CSR input)."""
    n_cells, n_genes = counts.shape
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["library_ids"] = np.array([b"simulated"])
        f.attrs["chemistry_description"] = "Single Cell 3' v3 (simulated)"
        m = f.create_group("matrix")
        opts = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=counts.data.astype(np.int32), chunks=True, **opts)
        m.create_dataset("indices", data=counts.indices.astype(np.int64), chunks=True, **opts)
        m.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_genes, n_cells], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        feats.create_dataset("name", data=np.array(symbols, dtype="S"))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * n_genes))
        feats.create_dataset("genome", data=np.array([b"GRCh38"] * n_genes))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_10x_mtx(
    path: Path,
    counts: sp.csr_matrix,
    barcodes: np.ndarray,
    gene_ids: np.ndarray,
    symbols: np.ndarray,
) -> None:
    """Write a Cell Ranger v3 matrix folder (``matrix.mtx.gz``, features, barcodes)."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        with gzip.open(tmp / "matrix.mtx.gz", "wb", compresslevel=1) as fh:
            scipy.io.mmwrite(fh, counts.T.tocoo(), field="integer")
        features = pd.DataFrame({"id": gene_ids, "name": symbols, "type": "Gene Expression"})
        features.to_csv(tmp / "features.tsv.gz", sep="\t", header=False, index=False)
        pd.Series(barcodes).to_csv(tmp / "barcodes.tsv.gz", header=False, index=False)


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    """Write a CSV (gzipped when the name ends in .gz) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
