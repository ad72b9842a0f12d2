"""The run's progress bar in a notebook (#26): `immunoprofile run` called in-process from a
cell of a real Jupyter kernel, whose stderr is no terminal, shows each stage's bar as a
tqdm widget whose counts only go forward and which ends neither full at 0 tasks nor red."""

from __future__ import annotations

import io
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from nbclient import NotebookClient
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_notebook

import pipeline
from pipeline.commands import stage_log
from pipeline.simulate import SimulationResult

WIDGET = "application/vnd.jupyter.widget-view+json"


class _WidgetRecorder(NotebookClient):
    """Keeps every widget state the kernel sends, in order, per model (what a browser
    would draw), besides the cell outputs nbclient records."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.states: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def handle_comm_msg(
        self, outs: list[NotebookNode], msg: dict[str, Any], cell_index: int
    ) -> None:
        state = msg["content"].get("data", {}).get("state")
        if state:
            self.states[msg["content"]["comm_id"]].append(state)
        super().handle_comm_msg(outs, msg, cell_index)


def _bars(states: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[Any]]]:
    """Per tqdm bar (an HBox of label, progress, text), by its stage: the counts its text
    showed, and its progress widget's values, maximums and styles."""
    bars = {}
    for history in states.values():
        if history[0].get("_model_name") != "HBoxModel":
            continue
        label, progress, text = (c.removeprefix("IPY_MODEL_") for c in history[0]["children"])
        stage = next(s["value"] for s in states[label] if s.get("value"))
        texts = [s["value"].replace("\u2007", " ") for s in states[text] if "value" in s]
        bars[stage] = {
            "counts": [tuple(map(int, m)) for t in texts for m in re.findall(r"(\d+)/(\d+) \[", t)],
            "values": [s["value"] for s in states[progress] if "value" in s],
            "max": [s["max"] for s in states[progress] if "max" in s],
            "styles": [s["bar_style"] for s in states[progress] if "bar_style" in s],
        }
    return bars


@pytest.mark.slow
def test_run_from_a_notebook_cell_shows_a_progress_widget_per_stage(
    tmp_path: Path, small_cohort: SimulationResult
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("cluster: {n_workers: 1, threads_per_worker: 1}\n")
    args = ["run", str(config), "--samplesheet", str(small_cohort.samplesheet),
            "--workdir", str(tmp_path / "w"), "--until", "qc"]  # fmt: skip
    source = (
        "import pipeline\nfrom pipeline.cli import main\n\n"
        f"assert main({args!r}) == 0\nprint(pipeline.__file__)"
    )
    book = new_notebook(cells=[new_code_cell(source)])
    client = _WidgetRecorder(book, timeout=120, kernel_name="python3",
                             resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute(env=dict(os.environ))  # PYTHONPATH too: the kernel imports this code
    outputs = book.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert pipeline.__file__ in printed  # the kernel ran the code under test
    assert "ingest: " in printed and "qc: " in printed
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    # one bar per stage, drawn as a widget (ipywidgets, of the dev extra, is installed)
    assert len(widgets) == 2, outputs
    bars = _bars(client.states)
    assert sorted(bars) == ["ingest", "qc"], bars
    for stage, bar in bars.items():
        done = [d for d, _ in bar["counts"]]
        totals = [t for _, t in bar["counts"]]
        assert done == sorted(done) and totals == sorted(totals), (stage, bar)  # only forward
        assert totals[-1] > 0 and bar["max"][-1] == totals[-1], (stage, bar)  # sized to the tasks
        assert bar["values"][-1] == totals[-1], (stage, bar)  # and full at the stage's end
        assert "danger" not in bar["styles"], (stage, bar)  # not red after a stage that ended


def test_on_a_pipe_there_is_no_bar_by_default(tmp_path: Path, client: Client) -> None:
    """Outside a kernel, a stderr that is no terminal (CI, SLURM logs) gets no bar."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stderr", err)
        with stage_log(tmp_path, "qc", client, interval=0.1):
            client.submit(sum, [1, 2], pure=False).result()
    assert err.getvalue() == ""
