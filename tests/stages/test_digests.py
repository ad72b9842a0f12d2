"""Stage digests: what makes a stage (and the stages after it) run again."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

from pipeline import registry
from pipeline.config import parse_config
from pipeline.registry import STAGE_NAMES, get_stage
from pipeline.stages import StageContext, is_current, recorded_digests, stage_digests
from pipeline.workdir import Workdir

LATER = list(STAGE_NAMES[1:])


def _digests(tmp_path: Path, **cfg: object) -> dict[str, str]:
    (tmp_path / "ingest.json").write_text('{"samples": []}')
    return stage_digests(parse_config({"workdir": str(tmp_path), **cfg}))


def test_a_parameter_changes_its_stage_and_the_later_ones(tmp_path: Path) -> None:
    base = _digests(tmp_path)
    changed = _digests(tmp_path, graph={"n_neighbors": 20})
    assert [s for s in base if base[s] != changed[s]] == ["graph", "annotate", "abundance",
                                                          "neighbourhoods", "expression", "predict",
                                                          "report"]  # fmt: skip
    changed = _digests(tmp_path, abundance={"time": "continuous"})
    assert [s for s in base if base[s] != changed[s]] == ["abundance", "neighbourhoods",
                                                          "expression", "predict", "report"]  # fmt: skip
    changed = _digests(tmp_path, neighbourhoods={"prop": 0.1})
    assert [s for s in base if base[s] != changed[s]] == ["neighbourhoods", "expression",
                                                          "predict", "report"]  # fmt: skip
    changed = _digests(tmp_path, expression={"min_cells": 20})
    assert [s for s in base if base[s] != changed[s]] == ["expression", "predict", "report"]
    changed = _digests(tmp_path, predict={"folds": 4})
    assert [s for s in base if base[s] != changed[s]] == ["predict", "report"]


@pytest.mark.parametrize("stage", LATER)
def test_an_algorithm_version_bump_reruns_the_stage_and_later_ones(
    tmp_path: Path, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _digests(tmp_path)
    stages = list(registry.STAGES)
    i = STAGE_NAMES.index(stage)
    stages[i] = registry.Stage(**{**vars(stages[i]), "version": stages[i].version + 1})
    monkeypatch.setattr(registry, "STAGES", tuple(stages))
    monkeypatch.setattr("pipeline.stages._digests.STAGES", tuple(stages))
    bumped = _digests(tmp_path)
    assert [s for s in base if base[s] != bumped[s]] == LATER[LATER.index(stage) :]


def test_an_edited_marker_file_reruns_annotate(tmp_path: Path) -> None:
    from importlib import resources

    markers = tmp_path / "markers.yaml"
    text = resources.files("pipeline.annotate").joinpath("markers.yaml").read_text()
    markers.write_text(text)
    base = _digests(tmp_path, annotate={"markers": str(markers)})
    markers.write_text(text.replace("version: 2", "version: 3"))
    edited = _digests(tmp_path, annotate={"markers": str(markers)})
    assert [s for s in base if base[s] != edited[s]] == ["annotate", "abundance",
                                                         "neighbourhoods", "expression",
                                                         "predict", "report"]  # fmt: skip


def test_a_stage_whose_files_were_deleted_runs_again(tmp_path: Path) -> None:
    cfg = parse_config({"workdir": str(tmp_path)})
    (tmp_path / "ingest.json").write_text('{"samples": []}')
    obs = pd.DataFrame({"sample_id": ["a", "b"]}, index=["0", "1"])
    StageContext(get_stage("qc"), cfg, Workdir(tmp_path)).write_cohort(ad.AnnData(obs=obs))
    assert list(recorded_digests(Workdir(tmp_path))) == ["ingest", "qc"]
    assert not is_current(cfg, "qc")  # no qc/summary.csv
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "summary.csv").write_text("sample_id\n")
    assert is_current(cfg, "qc") and not is_current(cfg, "preprocess")
    (tmp_path / "qc" / "summary.csv").unlink()
    assert not is_current(cfg, "qc")
