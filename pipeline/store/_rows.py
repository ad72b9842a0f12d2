"""Some rows of a stored array, read a chunk of rows at a time.

zarr decodes every chunk a selection touches at once (its reads are concurrent): the rows
of a few thousand cells, spread over a million cells' embedding, touch every chunk, so
``get_orthogonal_selection`` holds the whole array decoded for a moment (0.2-0.3 GiB at a
million cells, growing with the cohort). Reading one chunk of rows at a time holds one
chunk at a time, as fast.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import numpy.typing as npt
import zarr


def read_array_rows(
    array: zarr.Array, rows: npt.ArrayLike, *, dtype: npt.DTypeLike | None = None
) -> np.ndarray:
    """``array[rows]`` (rows in any order, repeats allowed) as a contiguous array of
    ``dtype`` (the array's own by default), reading a chunk of rows at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    n = array.shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        where = str(array.store_path).removeprefix("file://")
        msg = f"{where}: rows {rows.min()}..{rows.max()} outside 0..{n - 1}"
        raise IndexError(msg)
    out = np.empty((rows.size, *array.shape[1:]), dtype=array.dtype if dtype is None else dtype)
    if rows.size > 1 and (np.diff(rows) < 0).any():  # read in order, returned as asked
        order = np.argsort(rows, kind="stable")
        out[order] = read_array_rows(array, rows[order], dtype=out.dtype)
        return out
    size = array.chunks[0]
    edges = np.searchsorted(rows, np.arange(0, n + size, size))
    rest = (slice(None),) * (array.ndim - 1)
    for a, b in pairwise(edges):
        if b > a:
            out[a:b] = array.get_orthogonal_selection((rows[a:b], *rest))
    return out


def read_rows(store: str, element: str, rows: npt.ArrayLike) -> np.ndarray:
    """Rows of the float array ``element`` of the store at ``store`` as contiguous
    float32 (`read_array_rows`; a task's arguments are plain strings)."""
    array = zarr.open_array(store, path=element, mode="r")
    return read_array_rows(array, rows, dtype=np.float32)
