"""Stage digests: what makes a stage (and the stages after it) run again."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import workdir
from pipeline.config import parse_config
from pipeline.ingest import STAGE_RECORD

LATER = ["qc", "preprocess", "integrate", "graph", "annotate", "abundance"]


def _digests(tmp_path: Path, **cfg: object) -> dict[str, str]:
    (tmp_path / STAGE_RECORD).write_text('{"samples": []}')
    return workdir.stage_digests(parse_config({"workdir": str(tmp_path), **cfg}))


def test_a_parameter_changes_its_stage_and_the_later_ones(tmp_path: Path) -> None:
    base = _digests(tmp_path)
    changed = _digests(tmp_path, graph={"n_neighbors": 20})
    assert [s for s in base if base[s] != changed[s]] == ["graph", "annotate", "abundance"]
    changed = _digests(tmp_path, abundance={"time": "continuous"})
    assert [s for s in base if base[s] != changed[s]] == ["abundance"]


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
    assert [s for s in base if base[s] != edited[s]] == ["annotate", "abundance"]
