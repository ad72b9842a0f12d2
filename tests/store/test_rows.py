"""Rows of a stored array, read a chunk of rows at a time."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.store import read_array_rows, read_rows


@pytest.fixture
def stored(tmp_path) -> tuple[str, np.ndarray]:
    x = np.random.default_rng(3).normal(size=(1000, 7))
    store = str(tmp_path / "s.zarr")
    zarr.create_array(store, name="obsm/X", data=x, chunks=(64, 7))
    return store, x


ROWS = [
    np.arange(1000),
    np.array([5, 5, 70, 999]),  # repeats, across chunks
    np.array([999, 3, 500, 3]),  # any order
    np.array([], dtype=np.int64),
]


@pytest.mark.parametrize("rows", ROWS, ids=["all", "repeats", "unordered", "none"])
def test_rows_are_read_as_numpy_indexes_them(stored, rows) -> None:
    """`read_rows` (float32, for worker tasks) and `read_array_rows` (the array's own
    dtype, or the one asked for) give numpy's indexing of the whole array."""
    store, x = stored
    np.testing.assert_array_equal(read_rows(store, "obsm/X", rows), x[rows].astype(np.float32))
    array = zarr.open_array(store, path="obsm/X", mode="r")
    got = read_array_rows(array, rows)
    assert got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x[rows])
    assert read_array_rows(array, rows, dtype=np.float32).dtype == np.float32


def test_rows_outside_the_array_name_it(stored) -> None:
    store, _ = stored
    with pytest.raises(IndexError, match=r"s\.zarr/obsm/X: rows 1\.\.1000 outside 0\.\.999"):
        read_rows(store, "obsm/X", np.array([1, 1000]))
    with pytest.raises(IndexError, match="outside"):
        read_rows(store, "obsm/X", np.array([-1]))


def test_one_chunk_of_rows_is_decoded_at_a_time(stored, monkeypatch) -> None:
    """Each selection handed to zarr stays within one chunk of rows (zarr decodes every
    chunk a selection touches at once)."""
    store, x = stored
    array = zarr.open_array(store, path="obsm/X", mode="r")
    seen: list[np.ndarray] = []
    original = zarr.Array.get_orthogonal_selection

    def spy(self, selection, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(np.asarray(selection[0]))
        return original(self, selection, *args, **kwargs)

    monkeypatch.setattr(zarr.Array, "get_orthogonal_selection", spy)
    rows = np.arange(0, 1000, 37)
    np.testing.assert_array_equal(read_array_rows(array, rows), x[rows])
    assert len(seen) == len(np.unique(rows // 64))
    assert all(np.unique(s // 64).size == 1 for s in seen)
