"""The add-batch kernels on synthetic data: Symphony-style Harmony mapping, nearest
reference cells and what is derived from them, and the change report's comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.graph._query import place_query, query_edges, query_neighbors, vote_clusters
from pipeline.integrate import harmony_embedding
from pipeline.integrate._mapping import map_to_reference
from pipeline.runner_batch_report import moved_contrasts


def test_a_new_batch_lands_on_its_cell_types_in_the_harmony_space() -> None:
    """Five cell types in 10 PCs; batch offsets about as large as the types' spread."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (5, 10))

    def cells(n: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        types = rng.integers(0, 5, n)
        return centres[types] + rng.normal(0, 1, (n, 10)) + shift, types

    shifts = {b: rng.normal(0, 1.0, 10) for b in ("a", "b", "new")}
    ref = [cells(1500, shifts[b]) for b in ("a", "b")]
    z_ref = np.vstack([r[0] for r in ref])
    types_ref = np.concatenate([r[1] for r in ref])
    h = harmony_embedding(z_ref, np.repeat(["a", "b"], 1500), seed=0)
    z_new, types_new = cells(800, shifts["new"])

    mapped, r = map_to_reference(
        z_new, np.full(800, "new"), cluster_sizes=h.cluster_sizes,
        cluster_sums=h.cluster_sums, sigma=h.sigma,
    )  # fmt: skip
    assert mapped.shape == z_new.shape and np.allclose(r.sum(axis=1), 1, atol=1e-5)
    for t in range(5):  # each type's new cells move onto the reference's cells of that type
        target = h.embedding[types_ref == t].mean(axis=0)
        before = np.linalg.norm(z_new[types_new == t].mean(axis=0) - target)
        after = np.linalg.norm(mapped[types_new == t].mean(axis=0) - target)
        assert after < 0.3 * before, (t, before, after)
    nn = query_neighbors(h.embedding, mapped, 1)
    assert (types_ref[nn.indices[:, 0]] == types_new).mean() > 0.99
    # already-corrected reference cells mapped as a new batch barely move (a tenth of the
    # within-type SD of 1, against offsets of ~5 above)
    again, _ = map_to_reference(
        h.embedding[:300], np.full(300, "a"), cluster_sizes=h.cluster_sizes,
        cluster_sums=h.cluster_sums, sigma=h.sigma,
    )  # fmt: skip
    assert np.abs(again - h.embedding[:300]).mean() < 0.2


def test_mapping_rejects_a_query_of_another_dimension() -> None:
    with pytest.raises(ValueError, match="components"):
        map_to_reference(np.zeros((5, 4)), np.array(["x"] * 5),
                         cluster_sizes=np.ones(3), cluster_sums=np.ones((3, 6)))  # fmt: skip


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


def _tests(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame({"cell_type": [r[0] for r in rows], "denominator": "B",
                         "contrast": "response@month0", "method": "glmm",
                         "estimate": [r[1] for r in rows], "qvalue": [r[2] for r in rows]})  # fmt: skip


def test_moved_contrasts_name_every_kind_of_change() -> None:
    before = _tests([("a", 1.0, 0.01), ("b", np.nan, np.nan), ("c", -1.0, 0.5),
                     ("d", 0.5, 0.01), ("e", 0.4, 0.3)])  # fmt: skip
    after = _tests([("a", 0.9, 0.2), ("b", 2.0, 0.3), ("c", -1.1, 0.01), ("d", -0.5, 0.01),
                    ("e", 0.5, 0.4), ("f", 1.0, 0.5)])  # fmt: skip
    moved = moved_contrasts(before, after, 0.05).set_index("cell_type")["change"].to_dict()
    assert moved == {"a": "no longer significant", "b": "now estimable", "c": "now significant",
                     "d": "changed sign", "f": "new contrast"}  # fmt: skip
    assert set(moved_contrasts(None, after, 0.05)["change"]) == {"new contrast"}


def test_scvi_encodes_cells_of_a_batch_it_was_not_trained_on(tmp_path: Path) -> None:
    """The encoder does not take the batch: a new batch's cells get the latent means
    they would get under any trained label (the decoder alone knows batches)."""
    from pipeline.integrate import encode_scvi, train_scvi

    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(1.0, (300, 40)).astype(np.float32))
    train_scvi(x, np.repeat(["a", "b"], 150), tmp_path / "m", max_epochs=2)
    new = encode_scvi(x[:30], np.full(30, "new_batch"), tmp_path / "m")
    old = encode_scvi(x[:30], np.full(30, "b"), tmp_path / "m")
    assert new.shape == (30, 10) and np.array_equal(new, old)
