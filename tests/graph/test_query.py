"""New cells in an existing graph: their exact nearest reference cells, edges, clusters
and positions (add-batch), on synthetic data."""

from __future__ import annotations

import numpy as np

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
