"""The mixing metrics' LISI equals harmonypy's `compute_lisi` (faiss neighbours, the
perplexity search vectorized over cells)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from harmonypy import compute_lisi
from numpy.testing import assert_allclose

from pipeline.integrate._metrics import _lisi


@pytest.mark.parametrize(("n_cells", "perplexity"), [(1_500, 30.0), (40, 30.0)])
def test_lisi_equals_harmonypy(n_cells: int, perplexity: float) -> None:
    rng = np.random.default_rng(3)
    types = rng.integers(0, 5, n_cells)
    x = rng.normal(size=(5, 20))[types] * 3 + rng.normal(size=(n_cells, 20))
    # batches unevenly mixed across types: LISI varies between ~1 and ~2
    batch = np.where(rng.random(n_cells) < 0.15 + 0.15 * types, "b1", "b2")
    for labels in (batch, types.astype(str)):
        ref = compute_lisi(
            x, pd.DataFrame({"l": labels}), ["l"], min(perplexity, (n_cells - 1) / 3)
        )
        # faiss's float32 distances against harmonypy's float64 ones
        assert_allclose(_lisi(x, labels, perplexity), ref[:, 0], rtol=2e-3)
    assert 1.2 < np.median(_lisi(x, batch, perplexity)) < 1.9
