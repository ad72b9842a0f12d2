"""Per-stage progress and the structured stage log."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from distributed import Client

from pipeline.commands import stage_log
from pipeline.workdir import Workdir


def _slow_square(x: int) -> int:
    time.sleep(0.1)
    return x * x


def test_a_stage_writes_one_log_line_and_draws_progress(tmp_path: Path, client: Client) -> None:
    stream = io.StringIO()
    before = time.time()
    with stage_log(tmp_path, "qc", client, interval=0.1, progress=stream) as record:
        total = sum(client.gather(client.map(_slow_square, range(30), pure=False)))
        record["message"] = f"qc: {total}"
    lines = Workdir(tmp_path).stage_log.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["stage"] == "qc" and entry["status"] == "done"
    assert entry["message"] == f"qc: {sum(i * i for i in range(30))}" and entry["seconds"] >= 1.0
    assert entry["peak_worker_memory_gib"] > 0 and entry["driver_peak_rss_gib"] > 0
    assert before - 0.01 <= entry["started_unix"] <= before + 1  # benchmarks cut runs by it
    assert "tasks, 2 workers" in stream.getvalue()


def test_skipped_and_failed_stages_are_logged(tmp_path: Path, client: Client) -> None:
    with stage_log(tmp_path, "graph", client, progress=False) as record:
        record["message"] = "graph: unchanged inputs and parameters, skipped"
        record["status"] = "skipped"  # the caller knows (`run_or_skip`), not the message
    with stage_log(tmp_path, "expression", client, progress=False) as record:
        record["message"] = "expression: 4 cell types tested (12 skipped)"
    with (
        pytest.raises(ValueError, match="bad input"),
        stage_log(tmp_path, "annotate", client, progress=False),
    ):
        raise ValueError("bad input")
    entries = [json.loads(x) for x in Workdir(tmp_path).stage_log.read_text().splitlines()]
    assert [(e["stage"], e["status"]) for e in entries] == [
        ("graph", "skipped"),
        ("expression", "done"),
        ("annotate", "failed"),
    ]
    assert entries[2]["error"] == "ValueError: bad input"
