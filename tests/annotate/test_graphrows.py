"""The consensus's neighbour means from graph rows read by the workers equal those of the
graph in memory."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import zarr
from distributed import Client

from pipeline.annotate._graphrows import MemberGraph, StoredGraph
from pipeline.annotate._model import neighbour_mean
from pipeline.annotate._stage import _restrict
from pipeline.config import RunConfig


@pytest.mark.parametrize("members", ["kept", "some"])
def test_member_graph_means_equal_the_restricted_graph_in_memory(
    strong_batch_run: RunConfig, client: Client, members: str
) -> None:
    """All kept cells (the lineage level) or a scattered subset (B cells of the cohort's
    graph: edges to other cells dropped), in blocks of 1,000 cells: the same means and
    degrees, bit for bit."""
    store = str(Path(strong_batch_run.workdir) / "cohort.zarr")
    group = zarr.open_group(store, mode="r")
    graph = ad.io.read_elem(group["obsp/connectivities"])
    keep = ad.io.read_elem(group["obs"])["qc_pass"].to_numpy(dtype=bool)
    rows = np.flatnonzero(keep)
    if members == "some":
        rng = np.random.default_rng(1)
        rows = np.sort(rng.choice(rows, rows.size // 3, replace=False))
    vote = np.random.default_rng(2).dirichlet(np.ones(6), rows.size)
    want = neighbour_mean(_restrict(graph, rows), vote)
    stored = MemberGraph(
        client, StoredGraph(store, "obsp/connectivities", graph.shape[0]), rows, 1_000
    )
    got = neighbour_mean(stored, vote)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    if members == "some":
        assert (want[1] < np.asarray(graph[rows].sum(axis=1)).ravel()).any()  # edges dropped
