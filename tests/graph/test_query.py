"""New cells in an existing graph: their exact nearest reference cells, edges, clusters
and positions (add-batch), on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.graph import place_query, query_edges, query_neighbors, vote_clusters


def test_query_neighbors_are_the_exact_nearest_reference_cells() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(500, 5)).astype(np.float32)
    query = rng.normal(size=(40, 5)).astype(np.float32)
    nn = query_neighbors(ref, query, 7)
    dist = np.linalg.norm(query[:, None] - ref[None], axis=2)
    assert np.array_equal(nn.indices, np.argsort(dist, axis=1)[:, :7])
    assert np.allclose(nn.distances, np.sort(dist, axis=1)[:, :7], atol=1e-4)
    # umap's membership strengths: 1 for the nearest, decreasing; the others sum to log2(k)
    assert np.allclose(nn.weights[:, 0], 1) and (np.diff(nn.weights, axis=1) <= 1e-6).all()
    assert np.allclose(nn.weights[:, 1:].sum(axis=1), np.log2(7), rtol=1e-2)
    dist_m, conn = query_edges(nn, 500)
    assert dist_m.shape == conn.shape == (40, 500) and conn.nnz == 40 * 7


def test_clusters_and_positions_come_from_the_neighbours() -> None:
    rng = np.random.default_rng(2)
    ref = np.vstack([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = np.repeat([0, 1], 50)
    query = np.array([[0.05, 0.0], [5.0, 5.05], [2.4, 2.4]])
    nn = query_neighbors(ref, query, 10)
    assert vote_clusters(labels, nn)[:2].tolist() == [0, 1]
    layout = ref * 10  # any layout of the reference cells
    placed = place_query(layout, nn)
    assert np.linalg.norm(placed[0] - layout[:50].mean(axis=0)) < 1.5
    assert np.linalg.norm(placed[1] - layout[50:].mean(axis=0)) < 1.5
    nan_layout = layout.copy()
    nan_layout[:] = np.nan
    assert np.isnan(place_query(nan_layout, nn)).all()


def test_rows_are_read_a_chunk_at_a_time_as_numpy_indexes_them(tmp_path) -> None:
    """`read_rows`: rows across chunks, in any order, with repeats: numpy's indexing of
    the whole array; rows outside it: an error naming the array."""
    import zarr

    from pipeline.graph import read_rows

    x = np.random.default_rng(3).normal(size=(1000, 7)).astype(np.float32)
    store = str(tmp_path / "s.zarr")
    zarr.create_array(store, name="obsm/X", data=x, chunks=(64, 7))
    for rows in (np.arange(1000), np.array([5, 5, 70, 999]), np.array([999, 3, 500, 3]),
                 np.array([], dtype=np.int64)):  # fmt: skip
        np.testing.assert_array_equal(read_rows(store, "obsm/X", rows), x[rows])
    with pytest.raises(IndexError, match="obsm/X"):
        read_rows(store, "obsm/X", np.array([1, 1000]))
