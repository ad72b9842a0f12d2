"""The lazy cohort view's chunks, as every stage's tasks iterate over them."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.cohort import cell_chunks, open_cohort


def test_chunks_cover_every_cell_once_in_order(ingested: Path) -> None:
    cohort = open_cohort(ingested, chunk_cells=170)
    chunks = cell_chunks(cohort.X)
    assert chunks[0].start == 0 and chunks[-1].stop == cohort.n_obs
    assert all(a.stop == b.start for a, b in pairwise(chunks))
    assert [c.stop - c.start for c in chunks] == list(cohort.X.chunks[0])
    some = chunks[3]
    block = sp.csr_matrix(some.block.compute())
    whole = sp.csr_matrix(cohort.X[some.rows].compute())
    assert block.shape == whole.shape and (block != whole).nnz == 0


def test_chunks_must_hold_every_gene() -> None:
    x = da.zeros((100, 10), chunks=(50, 5))
    with pytest.raises(ValueError, match="chunked along cells only, got 2 gene chunks"):
        cell_chunks(x)
    assert [c.rows for c in cell_chunks(x.rechunk((50, 10)))] == [slice(0, 50), slice(50, 100)]
    assert np.asarray(cell_chunks(x.rechunk((50, 10)))[1].block.compute()).shape == (50, 10)
