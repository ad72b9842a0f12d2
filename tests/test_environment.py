"""Pins that keep the installed stack working (see pyproject.toml)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc


def test_scanpy_neighbors_above_4096_cells() -> None:
    """pynndescent 0.7 breaks scanpy 1.11.5's neighbors above 4,096 cells; the pin must hold."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, size=(5, 20))
    x = (centers[rng.integers(0, 5, 5000)] + rng.normal(size=(5000, 20))).astype(np.float32)
    adata = ad.AnnData(x)
    adata.obsm["X_pca"] = x
    sc.pp.neighbors(adata, use_rep="X_pca", n_neighbors=10, random_state=0)
    conn = adata.obsp["connectivities"]
    assert conn.shape == (5000, 5000)
    assert (np.diff(conn.indptr) > 0).all()


def test_torch_is_a_cpu_build_here() -> None:
    """The install must not have pulled a CUDA build onto a machine without a GPU."""
    import shutil

    import torch

    if torch.version.cuda is not None:  # a CUDA build only where a GPU is, and working
        assert shutil.which("nvidia-smi"), f"torch {torch.__version__} is a CUDA build"
        assert torch.cuda.is_available(), f"torch {torch.__version__} cannot use the GPU"
    else:
        assert not torch.cuda.is_available()
