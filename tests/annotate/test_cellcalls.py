"""A level's calls on the workers (`_cellcalls`) are those of the whole level in memory."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from distributed import Client

from pipeline.annotate import _cellcalls, annotate_cohort, annotate_counts, load_markers
from pipeline.annotate._cellcalls import ChunkCells, sample_groups
from pipeline.annotate._graphrows import StoredGraph
from pipeline.cohort import open_cohort
from pipeline.config import AnnotateConfig, RunConfig
from pipeline.sampling import sorted_codes


@pytest.mark.parametrize(
    ("settings", "saved"),
    [
        ({"b_graph": "cohort"}, True),
        ({"b_graph": "cohort", "b_consensus": "linear", "graph_weight": 0.0}, False),
    ],
    ids=["product-saved", "linear-no-lineage-consensus-held"],
)
def test_calls_on_the_workers_equal_the_calls_in_memory(
    strong_batch_run: RunConfig,
    strong_batch_cohort: ad.AnnData,
    client: Client,
    settings: dict,
    saved: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`annotate_cohort` (posteriors, consensus and per-sample EM on the workers, the
    graph's rows read from the store, cells in chunks of 200, tasks of ~1,000 cells in
    whole samples) against `annotate_counts` (each level whole in the driver, the same graph
    in memory) on the kept cells: the same labels, confidences, label probabilities and
    records, bit for bit; NaN outside each level. The label probabilities saved by the
    workers to a folder (as the stage does) or held by them."""
    obs = strong_batch_cohort.obs
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    totals = obs["total_counts"].to_numpy(dtype=np.float64)
    params = AnnotateConfig(**settings)
    markers = load_markers()
    monkeypatch.setattr(_cellcalls, "BLOCK_CELLS", 1_000)  # several tasks per level
    cohort = open_cohort(strong_batch_run.workdir, chunk_cells=200)
    assert len(cohort.X.chunks[0]) > 2 * obs["sample_id"].nunique()  # samples span chunks
    store = str(Path(strong_batch_run.workdir) / "cohort.zarr")
    got = annotate_cohort(
        cohort, client=client, keep=keep, total_counts=totals, markers=markers,
        connectivities=StoredGraph(store, "obsp/connectivities", len(obs)), params=params,
        parts_folder=str(tmp_path) if saved else None,
    )  # fmt: skip
    files = sorted(p.name for p in tmp_path.iterdir())
    if saved:  # a file per task and level, nothing else (no temporary left)
        assert len(files) > 2 and all(f.startswith(("lineage-", "b_subset-")) for f in files)
        assert all(f.endswith(".npy") and ".tmp" not in f for f in files)
    else:
        assert files == []
    graph = strong_batch_cohort.obsp["connectivities"]
    want = annotate_counts(
        cohort.X[np.flatnonzero(keep)].compute(), cohort.var["gene_symbols"], markers=markers,
        params=params, size=totals[keep] / 1e4,
        sample=sorted_codes(obs["sample_id"])[keep], connectivities=graph[keep][:, keep],
    )  # fmt: skip
    for level in ("lineage", "b_subset"):
        g, w = got.levels[level], want.levels[level]
        assert list(g.labels.categories) == list(w.labels.categories)
        np.testing.assert_array_equal(g.labels.codes[keep], w.labels.codes)
        assert (g.labels.codes[~keep] == -1).all()
        np.testing.assert_array_equal(g.confidence[keep], w.confidence)
        assert np.isnan(g.confidence[~keep]).all()
        prob = np.asarray(g.probabilities)
        np.testing.assert_array_equal(prob[keep], w.probabilities)
        assert np.isnan(prob[~keep]).all()
        assert {k: v for k, v in g.info.items() if k != "graph"} == w.info
        np.testing.assert_array_equal(g.model.rate, w.model.rate)
    b = got.levels["lineage"].labels == "B"
    assert b.sum() > 100 and got.levels["b_subset"].labels.notna().tolist() == b.tolist()
    if settings.get("graph_weight") == 0.0:
        assert got.levels["lineage"].info["changed_by_consensus"] == 0
    else:
        assert got.levels["b_subset"].info["changed_by_consensus"] > 0


def test_sample_groups_keep_every_sample_in_one_group() -> None:
    def chunk(*samples: int) -> ChunkCells:
        return ChunkCells(len(samples), np.arange(len(samples)), np.array(samples))

    cells = [chunk(0, 0), chunk(0, 1), chunk(2), chunk(), chunk(3), chunk(1, 4), chunk(5)]
    # a group per sample (the empty chunk 3 joins the next: it has no cells)
    assert sample_groups(cells, 1) == [[0, 1, 5], [2], [3, 4], [6]]
    # groups joined up to 3 cells (one group more may pass it)
    assert sample_groups(cells, 3) == [[0, 1, 5], [2, 3, 4, 6]]
    assert sample_groups(cells) == [[0, 1, 2, 3, 4, 5, 6]]
