"""The graph built block by block on the workers equals the graph built in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client

from pipeline.config import GraphConfig, RunConfig
from pipeline.graph import build_graph
from pipeline.graph._sharded import build_graph_on_workers
from pipeline.store import LazyCSR, update_anndata_store
from pipeline.store import read_manifest as read_store_manifest


@pytest.fixture(scope="module")
def embedding(strong_batch_run: RunConfig) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(store, embedding, keep, sample codes) of the graph fixture's cohort."""
    import anndata as ad

    store = str(Path(strong_batch_run.workdir) / "cohort.zarr")
    obs = ad.io.read_elem(zarr.open_group(store, mode="r")["obs"])
    x = np.asarray(zarr.open_array(store, path="obsm/X_pca_harmony", mode="r")[:])
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    codes = obs["sample_id"].astype("category").cat.codes.to_numpy()
    return store, x, keep, codes


def _same_graph(sharded, reference, *, atol: float = 0.0) -> None:
    for key in ("distances", "connectivities"):
        lazy = getattr(sharded, key)
        assert isinstance(lazy, LazyCSR)
        got, want = lazy.compute(), getattr(reference, key)
        assert got.shape == want.shape and got.nnz == want.nnz, key
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.data, want.data, rtol=0, atol=atol)


@pytest.mark.parametrize(("block_cells", "to_files"), [(1_500, True), (100_000, False)])
def test_inverted_file_search_in_blocks_equals_one_index(
    embedding: tuple[str, np.ndarray, np.ndarray, np.ndarray],
    client: Client,
    block_cells: int,
    to_files: bool,
    tmp_path: Path,
) -> None:
    """IVF search with every cell's probes found once and each block searched as a shard:
    the same neighbours, distances and connectivities as one index over all cells (their
    parts held by the workers, or saved to files and read back); the UMAP placed from a
    subsample and the Leiden sketch's labels spread round by round on the workers: the
    same as in one process."""
    store, x, keep, codes = embedding
    params = GraphConfig(exact_knn_below=0, umap_max_cells=2_000, leiden_max_cells=3_000)
    reference = build_graph(x, keep, codes, params=params)
    folder = str(tmp_path) if to_files else None
    with client.as_current():
        sharded = build_graph_on_workers(
            client, store, "obsm/X_pca_harmony", keep, codes, params=params,
            block_cells=block_cells, parts_folder=folder,
        )  # fmt: skip
        if to_files:  # three files per block and matrix
            n_blocks = -(-int(keep.sum()) // block_cells)
            assert len(list(tmp_path.glob("*.npy"))) == 2 * 3 * n_blocks
        _same_graph(sharded, reference)
    for r in params.resolutions:
        np.testing.assert_array_equal(sharded.clusters[r], reference.clusters[r])
    np.testing.assert_array_equal(sharded.umap, reference.umap)
    assert sharded.info == reference.info


def test_exact_search_in_blocks_equals_one_index(
    embedding: tuple[str, np.ndarray, np.ndarray, np.ndarray], client: Client
) -> None:
    """Below ``exact_knn_below`` cells: the same neighbours, in one block or several, with
    distances equal to BLAS's rounding (faiss computes |x|^2 + |y|^2 - 2 x.y, summed in
    other blocks and with another number of threads on a worker than in the driver: near
    0 the rounding is ~1e-3) and connectivities moved by at most 2e-3 (measured; UMAP's
    sigma follows the distances); Leiden and the UMAP of all cells from the gathered
    graph find the same clusters."""
    from sklearn.metrics import adjusted_rand_score

    store, x, keep, codes = embedding
    params = GraphConfig()
    reference = build_graph(x, keep, codes, params=params)
    with client.as_current():
        for block_cells in (100_000, 2_000):
            sharded = build_graph_on_workers(
                client, store, "obsm/X_pca_harmony", keep, codes, params=params,
                block_cells=block_cells,
            )  # fmt: skip
            _same_graph(sharded, reference, atol=5e-3)
            assert sharded.info == reference.info
            assert sharded.info["umap"]["fitted_on"] == "all cells"
            for r in params.resolutions:
                ari = adjusted_rand_score(sharded.clusters[r][keep], reference.clusters[r][keep])
                assert ari >= 0.9, (block_cells, r, ari)
            assert np.isfinite(sharded.umap[keep]).all()


class HeldReads:
    """A scheduler plugin: the most `read_rows` results in the workers' memory at once."""

    name = "held-reads"

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.most = 0

    def transition(self, key: object, start: str, finish: str, *args: object, **kw: object):
        if not str(key).startswith("read_rows"):
            return
        if finish == "memory":
            self.held.add(str(key))
        elif start == "memory":
            self.held.discard(str(key))
        self.most = max(self.most, len(self.held))


def test_the_search_holds_a_wave_of_blocks_not_every_block(
    embedding: tuple[str, np.ndarray, np.ndarray, np.ndarray], client: Client
) -> None:
    """The workers read the embedding block by block: a wave of query blocks (twice the
    worker threads) is held at a time, with the one before it until its last tasks are
    done, not every block (a resident embedding moved to every worker, 0.7 GB each at
    3.5M cells); the neighbours are those of the blocks searched all at once (above)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    store, _, keep, codes = embedding
    n_blocks = 16
    params = GraphConfig(exact_knn_below=0, umap_max_cells=2_000, leiden_max_cells=3_000)
    plugin = type("Held", (HeldReads, SchedulerPlugin), {})()
    client.cluster.scheduler.add_plugin(plugin)  # the LocalCluster's, in this process
    try:
        with client.as_current():
            build_graph_on_workers(
                client, store, "obsm/X_pca_harmony", keep, codes, params=params,
                block_cells=-(-int(keep.sum()) // n_blocks),
            )  # fmt: skip
    finally:
        client.cluster.scheduler.remove_plugin(name=plugin.name)
    wave = 2 * sum(client.nthreads().values())
    assert 1 <= plugin.most <= 2 * wave < n_blocks, plugin.most


def test_the_workers_write_the_graph_into_the_store(
    embedding: tuple[str, np.ndarray, np.ndarray, np.ndarray], client: Client, tmp_path: Path
) -> None:
    """A `LazyCSR` in a store update is written by the tasks (from the parts the workers
    saved; int32 indptr as scipy's) and read back by anndata as the same matrix; the
    manifest covers its arrays."""
    import shutil

    import anndata as ad

    store, _, keep, codes = embedding
    copy = tmp_path / "cohort.zarr"
    shutil.copytree(store, copy)
    params = GraphConfig(exact_knn_below=0, umap_max_cells=2_000, leiden_max_cells=3_000)
    parts = tmp_path / "parts"
    parts.mkdir()
    with client.as_current():
        sharded = build_graph_on_workers(
            client, str(copy), "obsm/X_pca_harmony", keep, codes, params=params,
            block_cells=2_500, parts_folder=str(parts),
        )  # fmt: skip
        want = sharded.connectivities.compute()
        info = read_store_manifest(copy)
        assert info is not None
        update_anndata_store(copy, info, elems={"obsp/connectivities": sharded.connectivities})
    group = zarr.open_group(str(copy), mode="r")
    assert group["obsp/connectivities/indptr"].dtype == np.int32
    got = ad.io.read_elem(group["obsp/connectivities"])
    assert abs(got - want).max() == 0 and got.nnz == want.nnz
    manifest = read_store_manifest(copy)
    assert manifest is not None and "obsp/connectivities/data" in manifest["arrays"]
