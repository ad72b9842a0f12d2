"""What a stage's run function may read and write: its declaration, checked; writes that
replace a stage's outputs and clear the later stages'."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from pipeline.config import RunConfig, parse_config
from pipeline.errors import ImmunoprofileError
from pipeline.registry import get_stage
from pipeline.stages import StageContext, recorded_digests
from pipeline.store import write_anndata_store
from pipeline.workdir import Workdir


def _context(cfg: RunConfig, stage: str) -> StageContext:
    return StageContext(get_stage(stage), cfg, Workdir(cfg.workdir))


@pytest.fixture
def cfg(tmp_path: Path) -> RunConfig:
    """A workdir whose cohort.zarr holds outputs of every stage up to annotate."""
    cfg = parse_config({"workdir": str(tmp_path)})
    (tmp_path / "ingest.json").write_text('{"samples": []}')
    obs = pd.DataFrame({"sample_id": ["a", "b"], "qc_pass": [True, False]}, index=["0", "1"])
    _context(cfg, "qc").write_cohort(ad.AnnData(obs=obs))
    _context(cfg, "preprocess").update_cohort(elems={"obsm/X_pca": np.ones((2, 3))})
    _context(cfg, "graph").update_cohort(
        obs=pd.DataFrame({"leiden_1": pd.Categorical(["0", "1"])}),
        elems={"obsm/X_umap": np.zeros((2, 2)), "uns/graph": {"n": 1}},
    )
    _context(cfg, "annotate").update_cohort(
        obs=pd.DataFrame({"lineage": ["B", "NK"], "lineage_confidence": [0.9, 0.8],
                          "b_subset": ["DN2", "unassigned"]}),
        elems={"uns/annotate": {"n": 1}},
    )  # fmt: skip
    return cfg


def test_a_rerun_stage_replaces_its_outputs_and_clears_the_later_stages(
    cfg: RunConfig, tmp_path: Path
) -> None:
    (tmp_path / "abundance").mkdir()
    (tmp_path / "report").mkdir()
    _context(cfg, "graph").update_cohort(
        obs=pd.DataFrame({"leiden_0.5": pd.Categorical(["0", "0"])}),
        elems={"obsm/X_umap": np.ones((2, 2)), "uns/graph": {"n": 2}},
    )
    got = ad.read_zarr(tmp_path / "cohort.zarr")
    assert list(got.obs.columns) == ["sample_id", "qc_pass", "leiden_0.5"]
    assert sorted(got.obsm) == ["X_pca", "X_umap"] and got.obsm["X_umap"].sum() == 4
    assert sorted(got.uns) == ["graph"] and got.uns["graph"]["n"] == 2
    assert list(recorded_digests(Workdir(tmp_path))) == ["ingest", "qc", "preprocess",
                                                         "integrate", "graph"]  # fmt: skip
    # computed from the labels just cleared
    assert not (tmp_path / "abundance").exists() and not (tmp_path / "report").exists()


def test_reads_and_writes_outside_the_declaration_are_refused(cfg: RunConfig) -> None:
    graph = _context(cfg, "graph")
    assert graph.read_obs(["qc_pass"])["qc_pass"].tolist() == [True, False]
    with pytest.raises(RuntimeError, match="reads cohort element 'obs/lineage'"):
        graph.read_obs(["lineage"])  # written after the graph stage: not its input
    with pytest.raises(RuntimeError, match=r"writes \['obsm/X_pca'\]"):
        graph.update_cohort(elems={"obsm/X_pca": np.zeros((2, 3))})
    with pytest.raises(RuntimeError, match="reads the sample stores but does not declare"):
        graph.open_counts()
    with (
        pytest.raises(RuntimeError, match="declares no folder of its own"),
        graph.stage_folder(),
    ):
        pass


def test_a_missing_input_names_the_stage_that_writes_it(cfg: RunConfig) -> None:
    # qc writes cohort.zarr whole again: every later stage's outputs are gone
    _context(cfg, "qc").write_cohort(ad.AnnData(obs=pd.DataFrame(index=["0", "1"])))
    with pytest.raises(ImmunoprofileError, match="no array obsm/X_pca: run the preprocess stage"):
        _context(cfg, "integrate").array("obsm/X_pca")
    abundance = _context(cfg, "abundance")
    with pytest.raises(ImmunoprofileError, match=r"lacks \['lineage'\]: run the annotate stage"):
        abundance.read_obs(["lineage"])
    with pytest.raises(ImmunoprofileError, match=r"lacks \['batch'\]: run the qc stage"):
        abundance.read_obs(["batch"])


def test_a_stage_folder_is_written_whole_with_its_manifest(cfg: RunConfig, tmp_path: Path) -> None:
    import json

    abundance = _context(cfg, "abundance")
    with pytest.raises(ValueError, match="boom"), abundance.stage_folder() as (out, _):
        out.tests.write_text("half")
        raise ValueError("boom")
    assert not (tmp_path / "abundance").exists()  # nothing half-written
    with abundance.stage_folder() as (out, manifest):
        out.tests.write_text("cell_type\n")
        manifest["n_tests"] = 0
    written = json.loads((tmp_path / "abundance" / "manifest.json").read_text())
    assert written["digest"] == abundance.digest() and written["n_tests"] == 0
    assert list(written["files"]) == ["tests.csv"]


def test_obsm_read_lazily_with_a_batch_layer_that_lacks_it(cfg: RunConfig, tmp_path: Path) -> None:
    """`lazy_obsm` is `read_obsm` as a Dask array read by the tasks: cohort.zarr's rows,
    then a batch layer's (NaN where an earlier version did not write the key)."""
    prob = np.arange(6, dtype=np.float32).reshape(2, 3)
    _context(cfg, "annotate").update_cohort(elems={"obsm/lineage_probabilities": prob})
    layer = Workdir(tmp_path).batch("b1").cells
    layer.parent.mkdir(parents=True)
    cells = ad.AnnData(obs=pd.DataFrame(index=["x", "y", "z"]))
    write_anndata_store(layer, cells, {"kind": "cells", "n_obs": 3, "n_vars": 0})
    abundance = _context(cfg, "abundance")
    lazy = abundance.lazy_obsm("lineage_probabilities", batches=True, missing_as_nan=True)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    expected = np.vstack([prob, np.full((3, 3), np.nan, dtype=np.float32)])
    np.testing.assert_array_equal(lazy.compute(), expected)
    eager = abundance.read_obsm("lineage_probabilities", batches=True, missing_as_nan=True)
    np.testing.assert_array_equal(eager, expected)
    with pytest.raises(ImmunoprofileError, match=r"cells.zarr has no obsm/lineage_probabilities"):
        abundance.lazy_obsm("lineage_probabilities", batches=True)
