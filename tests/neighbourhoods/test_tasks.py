"""The neighbourhoods stage's worker tasks on a small store: the same results as the
in-memory kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from distributed import Client

from pipeline.graph import load_shards, nearest_neighbors, neighbours_of
from pipeline.labels import LINEAGES
from pipeline.neighbourhoods import majority_labels, refined_index_cells, sample_counts
from pipeline.neighbourhoods._tasks import nhood_block, refine_block
from pipeline.store import read_rows


def _store(tmp_path: Path, x: np.ndarray, graph: sp.csr_matrix) -> str:
    path = str(tmp_path / "cohort.zarr")
    zarr.create_array(path, name="obsm/X", data=x, chunks=(700, x.shape[1]))
    for key in ("indptr", "indices"):
        values = getattr(graph, key).astype(np.int32)
        zarr.create_array(path, name=f"obsp/distances/{key}", data=values, chunks=(5000,))
    return path


@pytest.fixture
def cells(tmp_path: Path) -> tuple[str, np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(7)
    x = np.vstack([rng.normal(0, 1, (1500, 8)), rng.normal(4, 1, (1500, 8))]).astype(np.float32)
    nn = nearest_neighbors(x, 10)
    graph = sp.csr_matrix(
        (nn.distances[:, 1:].ravel(), nn.indices[:, 1:].ravel(), np.arange(0, 3000 * 9 + 1, 9)),
        shape=(3000, 3000),
    )
    return _store(tmp_path, x, graph), x, graph


def test_refining_a_block_of_sampled_cells_from_the_store_is_the_kernels(cells) -> None:
    store, x, graph = cells
    sampled = np.arange(5, 3000, 23)
    got = refine_block(store, "obsm/X", "obsp/distances", sampled[10:60], width=10)
    np.testing.assert_array_equal(np.unique(got), refined_index_cells(x, graph, sampled[10:60]))


@pytest.mark.parametrize(
    ("k", "resident"), [(30, True), (30, False), (400, False)]
)  # 400: more than the probed lists hold
def test_a_block_searched_shard_by_shard_is_the_in_memory_search(
    cells, tmp_path, k, resident, client: Client
) -> None:
    """With inverted lists (trained as `knn_index` trains them), the embedding read onto
    the workers in blocks (kept there, or read again by each search step, as the stage
    does) and queries whose probed lists hold fewer than k cells (searched exactly, as
    `neighbours_of` does): the same members, counts and labels; the member lists written
    to their rows."""
    store, x, _ = cells
    kept = np.arange(3000)
    index = np.arange(0, 3000, 41)
    samples = np.random.default_rng(8).integers(0, 5, 3000)
    labels = np.random.default_rng(9).integers(-1, len(LINEAGES), 3000).astype(np.int8)
    members_path = str(tmp_path / "members.zarr")
    zarr.create_array(members_path, shape=(index.size, k), chunks=(index.size, k), dtype="int32")
    shards = load_shards(client, store, "obsm/X", kept, exact_knn_below=100, seed=3,
                         block_cells=700, resident=resident)  # fmt: skip
    assert len(shards.bounds) == 5 and not shards.exact
    assert len(shards.points) == (5 if resident else 0)
    queries = [client.submit(read_rows, store, "obsm/X", index)]
    (found,) = shards.search(client, queries, k)
    block = client.submit(nhood_block, found, 0, index, kept, samples, 5,
                          {"lineage": (labels, len(LINEAGES))}, members_path).result()  # fmt: skip
    whole = neighbours_of(x, index, k, exact_knn_below=100, seed=3)
    expected = np.sort(whole.indices, axis=1)
    assert (expected >= 0).all()
    written = np.asarray(zarr.open_array(members_path, mode="r")[...])
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_allclose(block.kth_distance, whole.distances[:, -1], rtol=1e-5)
    np.testing.assert_array_equal(block.counts, sample_counts(expected, samples, 5))
    best, share = majority_labels(expected, labels, len(LINEAGES))
    np.testing.assert_array_equal(block.labels["lineage"][0], best)
    np.testing.assert_allclose(block.labels["lineage"][1], share)
