"""One writer per workdir: a second `run`/`add-batch` is refused naming the holder; a
lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.simulate import SimulationResult
from pipeline.store import LockedError
from pipeline.workdir import Workdir

HOLD = """
import sys, time
from pipeline.workdir import Workdir
with Workdir(sys.argv[1]).lock("immunoprofile run c.yaml"):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of tmp_path/'w' (as `immunoprofile run` does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "w")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_with_the_holder_named(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    workdir = Workdir(tmp_path / "w")
    held = workdir.lock_file.read_bytes()
    with pytest.raises(LockedError) as err, workdir.lock("immunoprofile add-batch"):
        pass
    assert (
        f"workdir {workdir.root} is in use by `immunoprofile run c.yaml` (pid {holder.pid} on "
        f"host {socket.gethostname()}, since "
    ) in str(err.value)
    assert "wait for that one to finish or stop it" in str(err.value)
    assert workdir.lock_file.read_bytes() == held  # the holder keeps its lock


def test_run_and_add_batch_refuse_a_locked_workdir_before_starting_a_cluster(
    tmp_path: Path,
    holder: subprocess.Popen[str],
    small_cohort: SimulationResult,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workdir: {tmp_path / 'w'}\nsamplesheet: {small_cohort.samplesheet}\n")
    assert main(["run", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"immunoprofile run: error: workdir {tmp_path / 'w'} is in use by")
    assert "Dask cluster" not in err and list((tmp_path / "w").iterdir()) == [
        Workdir(tmp_path / "w").lock_file
    ]
    assert small_cohort.late_samplesheet is not None
    assert main(["add-batch", str(cfg), str(small_cohort.late_samplesheet), "--refit"]) == 1
    assert "is in use by `immunoprofile run c.yaml`" in capsys.readouterr().err


def test_a_lock_left_by_a_killed_process_is_taken_over(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    workdir = Workdir(tmp_path / "w")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert workdir.lock_file.exists()  # a killed process cannot remove it
    with workdir.lock("immunoprofile run again.yaml") as said:
        record = json.loads(workdir.lock_file.read_text())
        assert record["pid"] == os.getpid() and record["command"] == "immunoprofile run again.yaml"
    assert said == [
        f"workdir {workdir.root}: cleared a stale lock left by `immunoprofile run c.yaml` "
        f"(pid {holder.pid} on host {socket.gethostname()}, since {said[0].split('since ')[1]}"
    ]
    assert not workdir.lock_file.exists()  # released on leaving
    assert [p.name for p in workdir.root.iterdir()] == []  # nothing staged is left


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    """The holder's pid now runs another program (started after the lock): stale."""
    workdir = Workdir(tmp_path / "w")
    workdir.root.mkdir()
    workdir.lock_file.write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "process_started": 1.0,
                    "command": "immunoprofile run old.yaml", "started": "long ago"})
    )  # fmt: skip
    with workdir.lock() as said:
        assert "cleared a stale lock left by `immunoprofile run old.yaml`" in said[0]


def test_a_lock_held_on_another_host_is_refused_with_its_path(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "w")
    workdir.root.mkdir()
    workdir.lock_file.write_text(
        json.dumps({"host": "node-17", "pid": 4242, "process_started": 1.0,
                    "command": "immunoprofile run c.yaml", "started": "2026-12-01T10:00:00"})
    )  # fmt: skip
    with pytest.raises(LockedError) as err, workdir.lock():
        pass
    assert "(pid 4242 on host node-17, since 2026-12-01T10:00:00)" in str(err.value)
    assert f"cannot be checked from here: if it is gone, delete {workdir.lock_file}" in str(
        err.value
    )


def test_the_lock_is_released_when_the_command_fails(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "w")
    with pytest.raises(RuntimeError), workdir.lock():
        raise RuntimeError("a stage failed")
    assert not workdir.lock_file.exists()
    with workdir.lock() as said:
        assert said == []
