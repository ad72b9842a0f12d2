"""The command line as a user runs it: the console script and `python -m pipeline`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import EXIT_NOT_IMPLEMENTED, main

ROOT = Path(__file__).resolve().parents[1]
IMMUNOPROFILE = str(Path(sys.executable).with_name("immunoprofile"))
COMMANDS = ["simulate", "run", "add-batch", "validate"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("launcher", [[IMMUNOPROFILE], [sys.executable, "-m", "pipeline"]])
def test_help_lists_every_command(launcher: list[str]) -> None:
    proc = _run(*launcher, "--help")
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    proc = _run(IMMUNOPROFILE, command, "--help")
    assert proc.returncode == 0 and "usage: immunoprofile " + command in proc.stdout


def test_run_says_where_it_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(ROOT / "configs" / "demo.yaml"), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == EXIT_NOT_IMPLEMENTED
    assert "stopping before stage 'ingest'" in err and "issue #3" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["add-batch", str(ROOT / "configs" / "demo.yaml"), "new.csv"],
            "add-batch is not implemented",
        ),
        (["validate", "somewhere"], "validate is not implemented"),
    ],
)
def test_unbuilt_commands_say_so(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == EXIT_NOT_IMPLEMENTED
    assert expected in capsys.readouterr().err


def test_run_needs_a_samplesheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("workdir: w\n")
    assert main(["run", str(cfg)]) == 1
    assert "no samplesheet" in capsys.readouterr().err


def test_bad_config_fails_with_one_paragraph(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulate:\n  n_patinets: 3\n")
    proc = _run(IMMUNOPROFILE, "simulate", str(cfg), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unknown key 'simulate.n_patinets'" in proc.stderr and str(cfg) in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_stage_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "configs/demo.yaml", "--until", "cluster"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_simulate_end_to_end_on_a_local_cluster(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "cluster: {profile: local, n_workers: 1, threads_per_worker: 1}\n"
        "simulate: {n_patients: 2, cells_per_sample: 50, n_genes: 3000, timepoints_months: [0, 6],"
        " format: mtx}\n"
    )
    proc = _run(
        sys.executable,
        "-m",
        "pipeline",
        "simulate",
        str(cfg),
        "--out",
        "out",
        "--null",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dashboard at http://127.0.0.1:" in proc.stderr
    assert "simulated 4 samples" in proc.stdout
    sheet = pd.read_csv(tmp_path / "out" / "samplesheet.csv")
    assert len(sheet) == 4
    assert pd.read_csv(tmp_path / "out" / "truth" / "effects.csv").empty  # --null
