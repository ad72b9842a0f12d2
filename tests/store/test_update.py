"""Copy-on-write updates of an AnnData-Zarr store: the same store as a whole rewrite."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr
from distributed import Client, get_task_stream
from numpy.testing import assert_array_equal

from pipeline.store import _lazy as store_lazy
from pipeline.store import _manifest as store_manifest
from pipeline.store import (
    describe_arrays,
    read_manifest,
    update_anndata_store,
    validate_store,
    write_anndata_store,
)

N = 500


def _cohort() -> ad.AnnData:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "sample_id": pd.Categorical(rng.choice(["s1", "s2", "s3"], N)),
            "note": rng.choice(["a", "b"], N).astype(object),
            "total_counts": rng.gamma(2.0, 500.0, N),
            "qc_pass": rng.random(N) > 0.1,
            "leiden_1": pd.Categorical(rng.integers(0, 4, N).astype(str)),
        },
        index=[f"cell{i}" for i in range(N)],
    )
    var = pd.DataFrame({"gene_symbols": [f"G{i}" for i in range(30)]},
                       index=[f"ENSG{i}" for i in range(30)])  # fmt: skip
    return ad.AnnData(
        obs=obs,
        var=var,
        obsm={
            "X_pca": rng.normal(size=(N, 10)).astype(np.float32),
            "X_umap": rng.normal(size=(N, 2)).astype(np.float32),
        },
        obsp={"connectivities": sp.random(N, N, density=0.02, format="csr", random_state=1)},
        uns={"graph": {"seconds": 1.5}, "qc": {"params": {"nmads": 5}}},
    )


def _equal(got: ad.AnnData, want: ad.AnnData) -> None:
    assert list(got.obs.columns) == list(want.obs.columns)
    pd.testing.assert_frame_equal(got.obs, want.obs)
    pd.testing.assert_frame_equal(got.var, want.var)
    assert sorted(got.obsm) == sorted(want.obsm)
    for k in want.obsm:
        assert_array_equal(got.obsm[k], want.obsm[k])
    assert sorted(got.obsp) == sorted(want.obsp)
    for k in want.obsp:
        assert (got.obsp[k] != want.obsp[k]).nnz == 0
    assert sorted(got.uns) == sorted(want.uns)


def test_an_update_gives_the_store_a_whole_rewrite_gives(tmp_path: Path) -> None:
    before = _cohort()
    store = tmp_path / "cohort.zarr"
    write_anndata_store(store, before, {"kind": "cohort", "n_obs": N, "n_vars": 30})
    rng = np.random.default_rng(1)
    lineage = pd.Categorical(rng.choice(["B", "NK"], N), categories=["B", "NK", "unassigned"])
    confidence = rng.random(N)
    harmony = rng.normal(size=(N, 10)).astype(np.float32)
    graph = sp.random(N, N, density=0.01, format="csr", random_state=2)
    var = before.var.assign(highly_variable=np.arange(30) % 2 == 0)

    update_anndata_store(
        store,
        {"kind": "cohort", "n_obs": N, "n_vars": 30, "stages": {"graph": "x"}},
        remove=["obsm/X_umap", "obs/leiden_1", "uns/graph", "obsm/not_there"],
        obs=pd.DataFrame({"lineage": lineage, "lineage_confidence": confidence}),
        elems={
            "var": var,
            "obsm/X_pca_harmony": harmony,
            "obsp/connectivities": graph,
            "uns/annotate": {"n": 3},
        },
    )

    want = before.copy()
    del want.obsm["X_umap"], want.uns["graph"]
    want.obs = want.obs.drop(columns=["leiden_1"])
    want.obs["lineage"] = lineage
    want.obs["lineage_confidence"] = confidence
    want.var = var
    want.obsm["X_pca_harmony"] = harmony
    want.obsp["connectivities"] = graph
    want.uns["annotate"] = {"n": 3}
    got = ad.read_zarr(store)
    _equal(got, want)
    assert got.uns["annotate"]["n"] == 3
    assert got.uns["qc"]["params"]["nmads"] == 5
    # the manifest describes the updated store exactly, as a whole rewrite's would
    manifest = read_manifest(store)
    assert manifest is not None
    assert manifest["stages"] == {"graph": "x"}
    assert manifest["arrays"] == describe_arrays(store)
    assert validate_store(store) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.zarr"]


def test_a_failed_update_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = tmp_path / "cohort.zarr"
    write_anndata_store(store, _cohort(), {"kind": "cohort", "n_obs": N, "n_vars": 30})
    manifest = read_manifest(store)
    with pytest.raises(Exception, match="object"):  # anndata cannot write an arbitrary object
        update_anndata_store(
            store, {"n_obs": N}, remove=["obsm/X_umap"], elems={"uns/bad": object()}
        )
    assert read_manifest(store) == manifest
    assert validate_store(store) == []
    assert "X_umap" in ad.read_zarr(store).obsm
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.zarr"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"remove": ["X"]}, "cannot update 'X'"),
        ({"elems": {"obsm/a/b": np.zeros(3)}}, "cannot update 'obsm/a/b'"),
        ({"obs": pd.DataFrame({"x": np.zeros(N - 1)})}, f"{N - 1} rows of obs columns"),
    ],
)
def test_a_bad_update_is_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    store = tmp_path / "cohort.zarr"
    write_anndata_store(store, _cohort(), {"kind": "cohort", "n_obs": N, "n_vars": 30})
    with pytest.raises(ValueError, match=message):
        update_anndata_store(store, {"n_obs": N}, **kwargs)
    assert validate_store(store) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.zarr"]


def test_a_dask_array_is_written_by_the_workers_chunk_by_chunk(
    tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lazy element (the PCs as preprocess projects them) is computed and written by the
    cluster's tasks, in chunks of whole rows, and reads back as the same values."""
    monkeypatch.setattr(store_lazy, "CHUNK_BYTES", 40 * 10 * 4)  # 40 rows per chunk
    store = tmp_path / "cohort.zarr"
    write_anndata_store(store, _cohort(), {"kind": "cohort", "n_obs": N, "n_vars": 30})
    values = np.random.default_rng(3).normal(size=(N, 10)).astype(np.float32)
    lazy = da.from_array(values, chunks=((120, 7, 300, 73), (10,))).map_blocks(np.negative)
    with get_task_stream(client) as stream:
        update_anndata_store(store, {"kind": "cohort", "n_obs": N, "n_vars": 30},
                             elems={"obsm/X_pca": lazy})  # fmt: skip
    assert any("store" in str(t["key"]) for t in stream.data)  # the workers wrote it
    assert zarr.open_array(str(store / "obsm" / "X_pca"), mode="r").chunks == (40, 10)
    got = ad.read_zarr(store)
    assert_array_equal(got.obsm["X_pca"], -values)
    assert validate_store(store) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.zarr"]


def test_manifest_checksums_read_in_slabs_equal_the_whole_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checksums are computed a slab of rows at a time, and equal those of the whole
    arrays (numbers, strings, categories), so stores written before still validate."""
    store = tmp_path / "cohort.zarr"
    write_anndata_store(store, _cohort(), {"kind": "cohort", "n_obs": N, "n_vars": 30})
    whole = describe_arrays(store)
    monkeypatch.setattr(store_manifest, "SLAB_BYTES", 64)  # a few rows per slab
    assert describe_arrays(store) == whole
    assert validate_store(store) == []
