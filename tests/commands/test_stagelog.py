"""Per-stage progress and the structured stage log."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import warnings
from pathlib import Path

import pytest
from distributed import Client

from pipeline.commands import stage_log
from pipeline.commands.stagelog import run_log
from pipeline.workdir import Workdir


def _slow_square(x: int) -> int:
    time.sleep(0.1)
    return x * x


def test_a_stage_writes_one_log_line_and_draws_progress(tmp_path: Path, client: Client) -> None:
    stream = io.StringIO()
    before = time.time()
    with stage_log(tmp_path, "qc", client, interval=0.1, progress=stream) as record:
        total = sum(client.gather(client.map(_slow_square, range(30), pure=False)))
        # a second computation in the same stage: the counter must not start again
        client.gather(client.map(_slow_square, range(24), pure=False))
        time.sleep(0.3)  # a last poll after the tasks
        record["message"] = f"qc: {total}"
    lines = Workdir(tmp_path).stage_log.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["stage"] == "qc" and entry["status"] == "done"
    assert entry["message"] == f"qc: {sum(i * i for i in range(30))}" and entry["seconds"] >= 1.0
    assert entry["peak_worker_memory_gib"] > 0 and entry["driver_peak_rss_gib"] > 0
    assert before - 0.01 <= entry["started_unix"] <= before + 1  # benchmarks cut runs by it
    shown = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) \[", stream.getvalue())]
    assert shown, stream.getvalue()
    done = [d for d, _ in shown]
    totals = [t for _, t in shown]
    assert done == sorted(done) and totals == sorted(totals)  # only forward
    assert shown[-1] == (54, 54), shown
    assert "2 workers" in stream.getvalue()
    assert re.search(r"\d\d:\d\d", stream.getvalue())  # the elapsed time


def test_a_stage_without_tasks_shows_no_task_counter(tmp_path: Path, client: Client) -> None:
    stream = io.StringIO()
    with stage_log(tmp_path, "report", client, interval=0.1, progress=stream):
        time.sleep(0.35)
    assert "0/0" not in stream.getvalue()


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


def _fails(x: int) -> int:
    raise ValueError(f"bad chunk {x}")


def test_run_log_keeps_stage_lines_warnings_and_worker_errors(
    tmp_path: Path, client: Client
) -> None:
    """logs/run.log, beside stages.jsonl: what a person reads after a run went wrong."""
    with run_log(tmp_path, client, "run: stages qc") as log:
        log.info("qc: 90 of 100 cells pass")
        warnings.warn("few cells in sample S1", UserWarning, stacklevel=1)
        with pytest.raises(ValueError, match="bad chunk 7"):
            client.submit(_fails, 7, pure=False).result()
        time.sleep(1.0)  # the worker's log record is forwarded asynchronously
    text = Workdir(tmp_path).run_log.read_text()
    assert "INFO immunoprofile: run: stages qc" in text
    assert "qc: 90 of 100 cells pass" in text
    assert "few cells in sample S1" in text
    assert "Compute Failed" in text and "bad chunk 7" in text  # from the worker's process
    size = len(text)
    with run_log(tmp_path, client, "run: stages graph"):
        logging.getLogger("some.library").info("chatter")  # below WARNING: left out
    more = Workdir(tmp_path).run_log.read_text()
    assert more.startswith(text) and "run: stages graph" in more[size:]
    assert "chatter" not in more
