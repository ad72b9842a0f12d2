"""`read_workdir`, the notebook entry point, with scanpy's own functions; `export`."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import anndata as ad
import dask.array as da
import matplotlib
import numpy as np
import pytest
import scanpy as sc

from pipeline.cli import main
from pipeline.errors import ImmunoprofileError
from pipeline.explore import LABEL_COLOURS, read_workdir

from .conftest import CommandRun

matplotlib.use("Agg")
GENES = ["MS4A1", "CD27", "ITGAX"]


@pytest.fixture(scope="module")
def adata(analysed_small: CommandRun) -> ad.AnnData:
    return read_workdir(analysed_small.workdir, genes=GENES)


def test_results_and_lazy_counts_of_the_qc_passed_cells(
    adata: ad.AnnData, analysed_small: CommandRun
) -> None:
    cohort = ad.read_zarr(analysed_small.workdir / "cohort.zarr")
    passed = cohort.obs["qc_pass"].to_numpy(dtype=bool)
    assert isinstance(adata.X, da.Array) and adata.n_obs == passed.sum()
    assert list(adata.obs_names) == list(cohort.obs_names[passed])
    assert adata.obs["qc_pass"].all() and not np.isnan(adata.obsm["X_pca_harmony"]).any()
    assert (adata.obs["leiden"] == adata.obs["leiden_0.5"]).all()  # the first resolution
    assert {"cell_type", "lineage", "b_subset"} <= set(adata.obs)
    # one colour per category, the same for a label wherever it appears
    for column in ("cell_type", "lineage", "b_subset", "leiden", "sample_id"):
        categories = adata.obs[column].cat.categories
        assert len(adata.uns[f"{column}_colors"]) == len(categories)
    colours = dict(zip(adata.obs["cell_type"].cat.categories, adata.uns["cell_type_colors"],
                       strict=True))  # fmt: skip
    assert (
        colours["DN2"]
        == LABEL_COLOURS["DN2"]
        == dict(
            zip(adata.obs["b_subset"].cat.categories, adata.uns["b_subset_colors"], strict=True)
        )["DN2"]
    )


def test_requested_genes_are_normalized_as_scanpy_does(adata: ad.AnnData) -> None:
    counts = adata[:2000].copy()
    counts.X = counts.X.compute()
    sc.pp.normalize_total(counts, target_sum=1e4)
    sc.pp.log1p(counts)
    symbols = counts.var["gene_symbols"].astype(str).tolist()
    expected = counts[:, [symbols.index(g) for g in GENES]].X.toarray()
    np.testing.assert_allclose(adata.raw.X[:2000], expected, rtol=1e-5, atol=1e-6)
    assert list(adata.raw.var_names) == GENES


def test_scanpy_plots_and_tools_accept_it(adata: ad.AnnData, tmp_path: Path) -> None:
    sc.pl.umap(adata, color=["MS4A1", "cell_type", "leiden"], show=False)
    sc.pl.dotplot(adata, GENES, groupby="cell_type", show=False)
    sc.pl.violin(adata, "CD27", groupby="b_subset", show=False)
    again = adata.copy()
    sc.pp.neighbors(again, use_rep="X_pca_harmony", n_neighbors=10)  # no NaN rows
    assert again.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)


def test_b_cells_alone_and_unknown_genes(analysed_small: CommandRun) -> None:
    b = read_workdir(analysed_small.workdir, cells="b", genes=["CD27"])
    assert set(b.obs["lineage"]) == {"B"} and b.n_obs > 100
    assert "naive" in set(b.obs["b_subset"])
    sc.pl.umap(b, color=["b_subset", "CD27"], show=False)
    with pytest.raises(ImmunoprofileError, match=r"genes not in the cohort: CD72x \(did you mean"):
        read_workdir(analysed_small.workdir, counts="lazy", genes=["CD72x"])


def test_export_writes_a_subset_a_collaborator_can_open(
    analysed_small: CommandRun, tmp_path: Path
) -> None:
    out = tmp_path / "share" / "b_cells.h5ad"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["export", str(analysed_small.workdir), "--h5ad", str(out),
                     "--cells", "b", "--genes", "MS4A1", "CD27"])  # fmt: skip
    assert code == 0, stderr.getvalue()
    shared = ad.read_h5ad(out)
    lazy = read_workdir(analysed_small.workdir, cells="b")
    assert list(shared.obs_names) == list(lazy.obs_names)
    symbols = lazy.var["gene_symbols"].astype(str).tolist()
    expected = lazy.X[:, [symbols.index("MS4A1"), symbols.index("CD27")]].compute().toarray()
    np.testing.assert_array_equal(shared.X.toarray(), expected)
    assert list(shared.var["gene_symbols"]) == ["MS4A1", "CD27"]
    assert {"cell_type", "cell_type_ontology_term_id", "b_subset"} <= set(shared.obs)
    assert {"X_umap", "X_pca_harmony"} <= set(shared.obsm) and "b_subset_colors" in shared.uns
    assert [p.name for p in out.parent.iterdir()] == ["b_cells.h5ad"]  # no temporary left
