"""The notebooks run top to bottom against an analysed workdir (the small cohort's, as
`make demo` leaves one) in a real Jupyter kernel; any error fails the test. They are
stored without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import CommandRun

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_are_there_without_outputs() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_b_cells.ipynb",
                                           "03_abundance.ipynb", "04_expression.ipynb",
                                           "05_predict.ipynb"]  # fmt: skip
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_an_analysed_workdir(
    path: Path, analysed_small: CommandRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMMUNOPROFILE_CONFIG", str(analysed_small.config))
    monkeypatch.setenv("IMMUNOPROFILE_WORKDIR", str(analysed_small.workdir))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    client.execute(env=dict(os.environ))
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert tables, "the notebook shows its tables"
    assert images, "the notebook shows its figures inline"
    pictures = [o["data"]["image/png"] for o in images]
    assert len(set(pictures)) == len(pictures), "a figure is shown twice"
