"""The graph rows the workers read for the consensus equal those of the graph in memory."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from pipeline.annotate._graphrows import StoredGraph, member_rows
from pipeline.annotate._model import neighbour_mean
from pipeline.annotate._stage import _restrict
from pipeline.config import RunConfig


@pytest.mark.parametrize("members", ["kept", "some"])
def test_member_rows_equal_the_restricted_graph_in_memory(
    strong_batch_run: RunConfig, members: str
) -> None:
    """All kept cells (the lineage level) or a scattered subset (B cells of the cohort's
    graph: edges to other cells dropped), read in blocks of 1,000 member cells: the same
    rows as the restricted graph in memory, entry for entry, and so the same neighbour
    means, bit for bit."""
    store = str(Path(strong_batch_run.workdir) / "cohort.zarr")
    group = zarr.open_group(store, mode="r")
    graph = ad.io.read_elem(group["obsp/connectivities"])
    keep = ad.io.read_elem(group["obs"])["qc_pass"].to_numpy(dtype=bool)
    rows = np.flatnonzero(keep)
    if members == "some":
        rng = np.random.default_rng(1)
        rows = np.sort(rng.choice(rows, rows.size // 3, replace=False))
    want = _restrict(graph, rows)
    position = np.full(graph.shape[0], -1, dtype=np.int32)
    position[rows] = np.arange(rows.size, dtype=np.int32)
    source = StoredGraph(store, "obsp/connectivities", graph.shape[0])
    got = sp.vstack(
        [member_rows(source, rows[a : a + 1_000], position) for a in range(0, rows.size, 1_000)],
        format="csr",
    )
    for part in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, part), getattr(want, part))
    vote = np.random.default_rng(2).dirichlet(np.ones(6), rows.size).astype(got.dtype)
    np.testing.assert_array_equal(neighbour_mean(got, vote)[0], neighbour_mean(want, vote)[0])
    if members == "some":
        assert (np.diff(want.indptr) < np.diff(graph[rows].indptr)).any()  # edges dropped
