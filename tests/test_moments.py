"""Per-gene moments by batch in one pass (qc's and preprocess's seurat_v3 passes)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipeline.moments import (
    add_moments,
    batch_moments,
    clipped_moments,
    clipped_moments_and_rows,
)


def test_moments_equal_numpy_per_batch_with_and_without_clipping() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(0.7, (200, 30)).astype(np.int32))
    batch = rng.integers(0, 3, 200)
    keep = rng.random(200) < 0.8
    clip = np.full((3, 30), 2.0)
    raw, clipped = batch_moments(x, batch, keep), clipped_moments(x, batch, keep, clip)
    dense = x.toarray().astype(float)
    for b in range(3):
        rows = dense[(batch == b) & keep]
        np.testing.assert_array_equal(raw[b][1], rows.sum(axis=0))
        np.testing.assert_array_equal(raw[b][2], (rows**2).sum(axis=0))
        assert raw[b][0, 0] == len(rows)
        np.testing.assert_array_equal(clipped[b][1], np.minimum(rows, 2).sum(axis=0))
    halves = add_moments(batch_moments(x[:100], batch[:100], keep[:100]),
                         batch_moments(x[100:], batch[100:], keep[100:]))  # fmt: skip
    for b in range(3):
        np.testing.assert_array_equal(halves[b], raw[b])


def test_the_clipped_pass_takes_the_kept_cells_counts_of_chosen_genes_too() -> None:
    """The same moments as `clipped_moments`, and x[keep][:, genes] as scipy gives it."""
    rng = np.random.default_rng(1)
    x = sp.csr_matrix(rng.poisson(0.5, (300, 40)).astype(np.int32))
    batch = rng.integers(0, 2, 300)
    keep = rng.random(300) < 0.7
    clip = rng.uniform(1, 3, (2, 40))
    genes = np.sort(rng.choice(40, 12, replace=False))
    moments, rows = clipped_moments_and_rows(x, batch, keep, clip, genes)
    expected = clipped_moments(x, batch, keep, clip)
    assert moments.keys() == expected.keys()
    for b in moments:
        np.testing.assert_array_equal(moments[b], expected[b])
    want = x[keep][:, genes]
    assert rows.shape == want.shape and rows.dtype == np.int32 and rows.has_sorted_indices
    np.testing.assert_array_equal(rows.toarray(), want.toarray())
    none = clipped_moments_and_rows(x, batch, np.zeros(300, dtype=bool), clip, genes)
    assert none[0] == {} and none[1].shape == (0, 12)
