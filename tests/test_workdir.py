"""Stage digests: what makes a stage (and the stages after it) run again."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import workdir
from pipeline.config import parse_config
from pipeline.ingest import STAGE_RECORD

LATER = ["qc", "preprocess", "integrate", "graph", "annotate", "abundance", "report"]


def _digests(tmp_path: Path, **cfg: object) -> dict[str, str]:
    (tmp_path / STAGE_RECORD).write_text('{"samples": []}')
    return workdir.stage_digests(parse_config({"workdir": str(tmp_path), **cfg}))


def test_a_parameter_changes_its_stage_and_the_later_ones(tmp_path: Path) -> None:
    base = _digests(tmp_path)
    changed = _digests(tmp_path, graph={"n_neighbors": 20})
    assert [s for s in base if base[s] != changed[s]] == ["graph", "annotate", "abundance",
                                                          "report"]  # fmt: skip
    changed = _digests(tmp_path, abundance={"time": "continuous"})
    assert [s for s in base if base[s] != changed[s]] == ["abundance", "report"]


@pytest.mark.parametrize("stage", LATER)
def test_an_algorithm_version_bump_reruns_the_stage_and_later_ones(
    tmp_path: Path, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _digests(tmp_path)
    monkeypatch.setitem(workdir.STAGE_VERSIONS, stage, workdir.STAGE_VERSIONS[stage] + 1)
    bumped = _digests(tmp_path)
    assert [s for s in base if base[s] != bumped[s]] == LATER[LATER.index(stage) :]


def test_an_edited_marker_file_reruns_annotate(tmp_path: Path) -> None:
    from importlib import resources

    markers = tmp_path / "markers.yaml"
    text = resources.files("pipeline.annotate").joinpath("markers.yaml").read_text()
    markers.write_text(text)
    base = _digests(tmp_path, annotate={"markers": str(markers)})
    markers.write_text(text.replace("version: 1", "version: 2"))
    edited = _digests(tmp_path, annotate={"markers": str(markers)})
    assert [s for s in base if base[s] != edited[s]] == ["annotate", "abundance", "report"]


def test_a_stage_whose_files_were_deleted_runs_again(tmp_path: Path) -> None:
    import anndata as ad
    import pandas as pd

    cfg = parse_config({"workdir": str(tmp_path)})
    (tmp_path / STAGE_RECORD).write_text('{"samples": []}')
    obs = pd.DataFrame({"sample_id": ["a", "b"]}, index=["0", "1"])
    workdir.write_cohort(cfg, ad.AnnData(obs=obs), "annotate")
    assert workdir.is_current(cfg, "preprocess")
    assert not workdir.is_current(cfg, "annotate")  # no annotate/markers_used.yaml
    (tmp_path / "annotate").mkdir()
    (tmp_path / "annotate" / "markers_used.yaml").write_text("version: 1\n")
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "summary.csv").write_text("sample_id\n")
    assert workdir.is_current(cfg, "annotate") and workdir.is_current(cfg, "qc")
    (tmp_path / "qc" / "summary.csv").unlink()
    assert not workdir.is_current(cfg, "qc")


def test_a_rerun_stage_replaces_its_outputs_and_clears_the_later_stages(tmp_path: Path) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    cfg = parse_config({"workdir": str(tmp_path)})
    (tmp_path / STAGE_RECORD).write_text('{"samples": []}')
    obs = pd.DataFrame(
        {"sample_id": ["a", "b"], "leiden_1": ["0", "1"], "lineage": ["B", "NK"],
         "lineage_confidence": [0.9, 0.8], "b_subset": ["DN2", "unassigned"]},
        index=["0", "1"],
    )  # fmt: skip
    cohort = ad.AnnData(obs=obs, obsm={"X_umap": np.zeros((2, 2)), "X_pca": np.ones((2, 3))},
                        uns={"annotate": {"n": 1}, "graph": {"n": 1}})  # fmt: skip
    workdir.write_cohort(cfg, cohort, "annotate")
    (tmp_path / "abundance").mkdir()
    workdir.update_cohort(
        cfg, "graph", obs=pd.DataFrame({"leiden_0.5": pd.Categorical(["0", "0"])}),
        elems={"obsm/X_umap": np.ones((2, 2)), "uns/graph": {"n": 2}},
    )  # fmt: skip
    got = ad.read_zarr(tmp_path / workdir.COHORT_STORE)
    assert list(got.obs.columns) == ["sample_id", "leiden_0.5"]
    assert sorted(got.obsm) == ["X_pca", "X_umap"] and got.obsm["X_umap"].sum() == 4
    assert sorted(got.uns) == ["graph"] and got.uns["graph"]["n"] == 2
    assert list(workdir.done_stages(cfg)) == ["ingest", "qc", "preprocess", "integrate", "graph"]
    assert not (tmp_path / "abundance").exists()  # computed from the labels just cleared
