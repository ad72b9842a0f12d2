"""The stage registry: one declaration per stage, consistent with the code and docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import RunConfig
from pipeline.registry import STAGES, get_stage, stage_table, writer_of
from pipeline.stages import element_path
from pipeline.workdir import Workdir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_declaration_resolves(stage) -> None:
    """Its run function and digest inputs import; its config section exists; the files
    and folders it names are `Workdir` attributes."""
    assert callable(stage.run_function())
    assert stage.inputs is None or callable(stage.inputs_function())
    assert stage.config is None or stage.config in RunConfig.model_fields
    workdir = Workdir("w")
    for elements in (stage.reads, stage.writes):
        for name in (*elements.files, *elements.conditional_files):
            assert isinstance(element_path(workdir, name), Path), name
        if elements.folder:
            assert element_path(workdir, elements.folder).root.parent == workdir.root


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_input_is_written_by_an_earlier_stage(stage) -> None:
    position = [s.name for s in STAGES].index(stage.name)
    for element in stage.reads.cohort:
        concrete = element.replace("*", "0.5")
        writer = writer_of(concrete)
        assert writer is not None, f"{stage.name} reads {element}, which no stage writes"
        assert [s.name for s in STAGES].index(writer.name) < position, (stage.name, element)
    if stage.reads.folder:
        earlier = [s.writes.folder for s in STAGES[:position]]
        assert stage.reads.folder in earlier


def test_unknown_stage_names_the_stages() -> None:
    with pytest.raises(ValueError, match="the stages are ingest, qc"):
        get_stage("expresion")


def test_the_architecture_document_shows_the_registry() -> None:
    """docs/architecture.md's stage table is `stage_table()`, word for word."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert stage_table() in text, "regenerate it: python -m pipeline.registry"
