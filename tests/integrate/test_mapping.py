"""Symphony-style mapping of new cells onto a Harmony reference (add-batch's
integration), on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.graph import query_neighbors
from pipeline.integrate import HarmonyReference, harmony_embedding, map_to_reference


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
    h = harmony_embedding(z_ref, np.repeat(["a", "b"], 1500), seed=0, max_cells=None)
    z_new, types_new = cells(800, shifts["new"])

    mapped, r = map_to_reference(z_new, np.full(800, "new"), h.reference)
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
    again, _ = map_to_reference(h.embedding[:300], np.full(300, "a"), h.reference)
    assert np.abs(again - h.embedding[:300]).mean() < 0.2


def test_mapping_rejects_a_query_of_another_dimension() -> None:
    with pytest.raises(ValueError, match="components"):
        reference = HarmonyReference(np.ones((6, 3)), np.ones(3), np.ones((3, 6)), 0.1)
        map_to_reference(np.zeros((5, 4)), np.array(["x"] * 5), reference)


def test_the_reference_is_stored_and_read_back_through_its_record() -> None:
    """What the integrate stage writes to uns["integrate"]["harmony"] is what add-batch
    reads (`to_record` and `from_record` are inverse)."""
    rng = np.random.default_rng(4)
    ref = HarmonyReference(rng.normal(size=(6, 3)).astype(np.float32), rng.random(3),
                           rng.normal(size=(3, 6)), 0.1)  # fmt: skip
    back = HarmonyReference.from_record(ref.to_record())
    for field in ("centroids", "cluster_sizes", "cluster_sums"):
        np.testing.assert_array_equal(getattr(back, field), getattr(ref, field))
    assert back.sigma == ref.sigma
