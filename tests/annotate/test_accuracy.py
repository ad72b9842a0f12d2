"""Annotation accuracy against the simulator's truth, at default settings and under
halved library sizes and doubled batch effects.

The simulator draws its cell types from the same literature as the marker file (see
docs/architecture.md), so these numbers are an upper bound of what real data give; the
real-data checks are in test_real_data.py.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from distributed import Client

from pipeline.annotate import annotate_cohort, load_markers
from pipeline.cohort import open_cohort
from pipeline.config import RunConfig
from pipeline.simulate import LabelAccuracy as Accuracy
from pipeline.simulate import label_accuracy as accuracy

from .conftest import ACCURACY_COHORT, read_truth, run_through_annotate


def _check(acc: Accuracy, slack: float = 0.0) -> None:
    assert acc.lineage_macro_f1 >= 0.95 - slack, acc
    assert acc.b_macro_f1 >= 0.85 - slack, acc
    assert min(acc.b_f1.values()) >= 0.75 - slack, acc
    assert acc.b_proportion_error <= 0.03 + slack, acc


def test_default_settings_meet_the_accuracy_targets(
    accuracy_run: RunConfig, accuracy_cohort: ad.AnnData
) -> None:
    acc = accuracy(accuracy_cohort.obs, read_truth(accuracy_run, accuracy_cohort.obs_names))
    print(acc)
    _check(acc)
    assert acc.lineage_proportion_error <= 0.01


def test_outputs_follow_the_label_contract(accuracy_cohort: ad.AnnData) -> None:
    obs = accuracy_cohort.obs
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    assert obs["lineage"].notna().to_numpy().tolist() == kept.tolist()
    is_b = (obs["lineage"] == "B").to_numpy()
    assert obs["b_subset"].notna().to_numpy().tolist() == is_b.tolist()
    assert set(obs["b_subset"].cat.categories) == {
        "naive", "transitional", "unswitched_memory", "switched_memory", "DN1", "DN2",
        "plasmablast", "unassigned",
    }  # fmt: skip
    confidence = obs["lineage_confidence"].to_numpy()
    assert np.isnan(confidence[~kept]).all() and (confidence[kept] >= 0).all()
    low = obs["lineage_confidence"] < 0.5
    assert (obs.loc[low & kept, "lineage"] == "unassigned").all()
    # the finest label with its Cell Ontology id, as CELLxGENE names them
    b_called = is_b & (obs["b_subset"] != "unassigned").to_numpy()
    finest = np.where(b_called, obs["b_subset"].astype(object), obs["lineage"].astype(object))
    assert obs["cell_type"].astype(str)[kept].tolist() == finest[kept].astype(str).tolist()
    ids = obs["cell_type_ontology_term_id"].astype(object)
    assert set(ids[obs["cell_type"] == "DN2"]) == {"CL:0000981"}
    assert set(ids[obs["cell_type"] == "naive"]) == {"CL:0000788"}
    assert ids[~kept].isna().all()
    record = accuracy_cohort.uns["annotate"]
    # per-cell label probabilities (the abundance stage draws labels from them): the
    # level's labels and unassigned, rows summing to one for the cells of the level;
    # taken under each sample's composition without the graph, so their most probable
    # label is the called one for most but not all cells
    for level, members in (("lineage", kept), ("b_subset", is_b)):
        prob = accuracy_cohort.obsm[f"{level}_probabilities"]
        columns = [str(c) for c in record[level]["probability_columns"]]
        assert columns == list(obs[level].cat.categories)
        assert np.isnan(prob[~members]).all() and np.isfinite(prob[members]).all()
        assert np.allclose(prob[members].sum(axis=1), 1.0, atol=1e-4)
        called = obs[level].astype(str).to_numpy()[members]
        sure = called != "unassigned"
        top = np.array(columns)[prob[members].argmax(axis=1)]
        assert (top[sure] == called[sure]).mean() >= 0.9
    assert record["vocabularies"]["version"] >= 1
    assert record["b_subset"]["graph"] == "b_cells"  # the B cells' own kNN graph
    assert record["b_subset"]["consensus"]["kind"] == "product"
    assert record["lineage"]["consensus"]["kind"] == "linear"
    assert record["markers"]["version"] >= 1
    assert {"label", "feature", "fraction_expressing"} <= set(record["b_subset"]["dotplot"].columns)
    # the cell labels agree with the Leiden clusters of the integrated graph
    clusters = record["clusters"]
    assert clusters["n_cells"].sum() == kept.sum()
    assert (clusters["purity"] >= 0.9).mean() >= 0.8, clusters


def test_the_stage_leaves_no_scratch_folder(accuracy_run: RunConfig) -> None:
    """The workers' saved label probabilities go with the stage."""
    assert not list(Path(accuracy_run.workdir).glob(".annotate-parts*"))


@pytest.mark.slow  # ~20 s: its own cohort and run (the default suite's time budget)
def test_doubled_batch_effects_stay_within_005(
    strong_batch_run: RunConfig, strong_batch_cohort: ad.AnnData, client: Client
) -> None:
    """The shared strong-batch cohort (batch_effect_sd 0.5, twice the default), annotated
    in memory without rewriting its store."""
    obs = strong_batch_cohort.obs.copy()
    result = annotate_cohort(
        open_cohort(strong_batch_run.workdir),
        client=client,
        keep=obs["qc_pass"].to_numpy(dtype=bool),
        total_counts=obs["total_counts"].to_numpy(),
        markers=load_markers(),
        connectivities=strong_batch_cohort.obsp["connectivities"],
    )
    for level, call in result.levels.items():
        obs[level] = call.labels
    acc = accuracy(obs, read_truth(strong_batch_run, obs.index))
    print(acc)
    _check(acc, slack=0.05)


@pytest.mark.slow
def test_halved_library_sizes_stay_within_005(
    tmp_path: Path, client: Client, accuracy_run: RunConfig, accuracy_cohort: ad.AnnData
) -> None:
    base = accuracy(accuracy_cohort.obs, read_truth(accuracy_run, accuracy_cohort.obs_names))
    run = run_through_annotate(tmp_path, client, {**ACCURACY_COHORT, "median_umi": 1750.0})
    cohort = ad.read_zarr(Path(run.workdir) / "cohort.zarr")
    acc = accuracy(cohort.obs, read_truth(run, cohort.obs_names))
    print("base:", base, "\nhalved:", acc)
    _check(acc, slack=0.05)
    assert acc.b_macro_f1 >= base.b_macro_f1 - 0.05
    assert acc.lineage_macro_f1 >= base.lineage_macro_f1 - 0.05
