"""The command line as a user runs it: the console script and `python -m pipeline`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pipeline.abundance import fit_abundance_models
from pipeline.cli import main
from pipeline.simulate import SimulationResult
from pipeline.store import read_manifest

from .conftest import CommandRun

ROOT = Path(__file__).resolve().parents[1]
IMMUNOPROFILE = str(Path(sys.executable).with_name("immunoprofile"))
COMMANDS = ["init", "simulate", "run", "add-batch", "export", "validate", "power"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)


def cohort_cells(workdir: Path) -> int:
    manifest = read_manifest(workdir / "cohort.zarr")
    assert manifest is not None
    return int(manifest["n_obs"])


def _abundance_matches_truth(workdir: Path, cohort: SimulationResult) -> None:
    """The GLMM's estimates from the pipeline's labels against the same model fitted to
    the simulator's true labels (realized counts): annotation errors barely move them."""
    truth = pd.read_csv(cohort.samplesheet.parent / "truth" / "proportions.csv")
    truth = truth[(truth["level"] == "lineage") | (truth["denominator"] == "B")]
    sheet = pd.read_csv(cohort.samplesheet)
    tidy = truth.merge(sheet[["sample_id", "patient_id", "timepoint_months", "response",
                              "batch"]], on="sample_id")  # fmt: skip
    expected = fit_abundance_models(tidy, methods=("glmm",)).tests
    got = pd.read_csv(workdir / "abundance" / "tests.csv")
    keys = ["cell_type", "denominator", "contrast"]
    both = got[got["method"] == "glmm"].merge(expected, on=keys, suffixes=("", "_truth"))
    assert len(both) == len(expected)
    both = both.dropna(subset=["estimate", "estimate_truth"])
    se = (both["ci_high_truth"] - both["ci_low_truth"]) / (2 * 1.96)
    shift = (both["estimate"] - both["estimate_truth"]).abs() / se
    # 6 patients, ~36 B cells per sample: a few misassigned cells matter, yet every
    # estimate stays within 1.5 of its standard errors from the true-label estimate
    assert len(both) >= 0.8 * len(expected)
    assert np.corrcoef(both["estimate"], both["estimate_truth"])[0, 1] > 0.85
    assert shift.max() < 1.5 and shift.median() < 0.4


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


def test_run_then_rerun_skips_and_says_where_it_stops(
    tmp_path: Path,
    small_cohort: SimulationResult,
    analysed_small: CommandRun,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = analysed_small.ingest
    assert code == 0
    assert "ingest: 18 samples (18 written, 0 unchanged)" in out and "qc:" not in out

    code, out, err = analysed_small.run
    assert code == 0, err
    assert "(0 written, 18 unchanged)" in out
    assert "qc: " in out and "preprocess: 500 HVGs, 20 PCs" in out
    assert "integrate: harmony on" in out and "graph: 15-NN graph" in out
    assert "annotate: " in out and "B cells" in out
    assert "abundance: 18 samples" in out
    _abundance_matches_truth(analysed_small.workdir, small_cohort)
    log = [
        json.loads(line)
        for line in (analysed_small.workdir / "logs" / "stages.jsonl").read_text().splitlines()
    ]
    assert [e["stage"] for e in log] == ["ingest", "ingest", "qc", "preprocess", "integrate",
                                         "graph", "annotate", "abundance", "neighbourhoods",
                                         "expression", "predict", "report"]  # fmt: skip
    assert [e["status"] for e in log[2:]] == ["done"] * 10 and log[-1]["cells"] == cohort_cells(
        analysed_small.workdir
    )
    assert "report: " in out and "stopping before" not in err
    run_log = (analysed_small.workdir / "logs" / "run.log").read_text()
    assert (
        "immunoprofile: run: stages ingest, qc," in run_log
        and "INFO immunoprofile: report: " in run_log
    )
    cohort = ad.read_zarr(analysed_small.workdir / "cohort.zarr")
    assert cohort.obsm["X_pca"].shape == (cohort.n_obs, 20)
    assert {"X_pca_harmony", "X_umap"} <= set(cohort.obsm)
    assert {"distances", "connectivities"} <= set(cohort.obsp)
    assert {"leiden_0.5", "leiden_1"} <= set(cohort.obs.columns)
    assert {"lineage", "lineage_confidence", "b_subset", "b_subset_confidence"} <= set(
        cohort.obs.columns
    )
    assert (analysed_small.workdir / "annotate" / "dotplot_b_subset.png").exists()
    assert {"qc_pass", "qc_reason", "doublet_score", "pct_counts_mt", "sample_id"} <= set(
        cohort.obs.columns
    )
    assert int(cohort.var["highly_variable"].sum()) == 500
    assert (analysed_small.workdir / "qc" / "summary.csv").exists()

    # re-runs and changed parameters, on a copy of the workdir
    workdir = tmp_path / "w"
    shutil.copytree(analysed_small.workdir, workdir)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(analysed_small.config.read_text())
    args = ["run", str(cfg), "--samplesheet", str(small_cohort.samplesheet),
            "--workdir", str(workdir)]  # fmt: skip
    assert main([*args, "--until", "preprocess"]) == 0
    out = capsys.readouterr().out
    assert "qc: unchanged inputs and parameters, skipped" in out
    assert "preprocess: unchanged inputs and parameters, skipped" in out
    assert main(["validate", str(workdir)]) == 0

    # --dry-run says what would run and why, computing nothing
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 of 11 stage(s) would run" in out and "ingest          check" in out
    manifest = workdir / "report" / "manifest.json"  # as an older version's report
    record = json.loads(manifest.read_text())
    version = record["basis"]["version"]
    manifest.write_text(json.dumps({**record, "digest": "older",
                                    "basis": {**record["basis"], "version": version - 1}}))  # fmt: skip
    cfg.write_text(analysed_small.config.read_text() + "qc: {nmads: 4}\n")
    stamp = (workdir / "cohort.zarr" / "zarr.json").stat().st_mtime_ns
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "10 of 11 stage(s) would run" in out
    assert "qc              RUN    changed qc.nmads: 5.0 -> 4.0" in out
    assert "preprocess      RUN    qc re-runs (its later stages with it)" in out
    assert (workdir / "cohort.zarr" / "zarr.json").stat().st_mtime_ns == stamp
    cfg.write_text(analysed_small.config.read_text())
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 of 11 stage(s) would run" in out
    assert f"report          RUN    algorithm version {version - 1} -> {version}" in out
    assert main([*args, "--dry-run", "--force", "predict"]) == 0
    out = capsys.readouterr().out
    assert "predict         RUN    forced (--force predict)" in out
    assert "expression      skip   current" in out
    fewer = small_cohort.samplesheet.with_name(f"fewer_{tmp_path.name}.csv")  # relative paths
    lines = small_cohort.samplesheet.read_text().splitlines()
    fewer.write_text("\n".join(lines[:-1]) + "\n")
    dropped = lines[-1].split(",")[0]
    assert main([*args, "--samplesheet", str(fewer), "--dry-run"]) == 0
    fewer.unlink()  # the cohort folder is shared
    out = capsys.readouterr().out
    assert f"ingest          RUN    1 removed ({dropped})" in out
    assert main([*args, "--until", "qc", "--force", "report"]) == 1
    assert "--force report: the stage is after --until qc" in capsys.readouterr().err
    manifest.write_text(json.dumps(record))

    # a changed preprocess parameter recomputes preprocess only
    cfg.write_text(
        "cluster: {n_workers: 2, threads_per_worker: 1}\npreprocess: {n_top_genes: 500, n_comps: 10}\n"
    )
    report = tmp_path / "perf" / "report.html"
    assert main([*args, "--until", "preprocess", "--performance-report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "qc: unchanged inputs and parameters, skipped" in out
    assert "preprocess: 500 HVGs, 10 PCs" in out
    assert "Dask Performance Report" in report.read_text()  # the recomputed stage's tasks
    cohort = ad.read_zarr(workdir / "cohort.zarr")
    assert cohort.obsm["X_pca"].shape[1] == 10
    # outputs computed from the old PCs are gone with them
    assert not {"X_pca_harmony", "X_umap"} & set(cohort.obsm) and not cohort.obsp
    assert not [c for c in cohort.obs.columns if c.startswith(("leiden_", "lineage", "b_subset"))]
    assert "integrate" not in cohort.uns and "graph" not in cohort.uns
    assert "annotate" not in cohort.uns
    assert not (workdir / "abundance").exists()

    # integrate and graph run again from the new PCs; a graph parameter re-runs graph only
    assert main([*args, "--until", "graph"]) == 0
    assert "integrate: harmony on" in capsys.readouterr().out
    cfg.write_text(
        "cluster: {n_workers: 2, threads_per_worker: 1}\npreprocess: {n_top_genes: 500, n_comps: 10}\n"
        "graph: {resolutions: [0.8]}\n"
    )
    assert main([*args, "--until", "graph"]) == 0
    out = capsys.readouterr().out
    assert "integrate: unchanged inputs and parameters, skipped" in out
    assert "clusters at 0.8" in out
    cohort = ad.read_zarr(workdir / "cohort.zarr")
    assert [c for c in cohort.obs.columns if c.startswith("leiden_")] == ["leiden_0.8"]

    # a changed qc parameter recomputes qc and everything after it
    cfg.write_text(
        "cluster: {n_workers: 2, threads_per_worker: 1}\nqc: {nmads: 4, doublets: false}\n"
        "preprocess: {n_top_genes: 500, n_comps: 10}\n"
    )
    assert main([*args, "--until", "preprocess"]) == 0
    out = capsys.readouterr().out
    assert "qc: " in out and "skipped" not in out
    cohort = ad.read_zarr(workdir / "cohort.zarr")
    assert cohort.obs["doublet_score"].isna().all()
    assert cohort.obsm["X_pca"].shape[1] == 10
    # --force runs a current stage again (and those after it, up to --until)
    assert main([*args, "--until", "preprocess", "--force", "preprocess"]) == 0
    out = capsys.readouterr().out
    assert "qc: unchanged inputs and parameters, skipped" in out
    assert "preprocess: 500 HVGs, 10 PCs" in out


def test_add_batch_refuses_a_workdir_that_is_not_analysed(
    tmp_path: Path, small_cohort: SimulationResult, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workdir: {tmp_path / 'none'}\n")
    assert small_cohort.late_samplesheet is not None
    assert main(["add-batch", str(cfg), str(small_cohort.late_samplesheet)]) == 1
    err = capsys.readouterr().err
    assert "run the ingest stage first" in err and "\n" not in err.strip()
    assert not (tmp_path / "none" / "batches").exists()


def test_run_reports_samplesheet_problems_in_one_paragraph(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "sample_id,patient_id,timepoint_months,response,batch,path\nS 1,P1,-1,maybe,b,x.h5\n"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"samplesheet: {sheet}\nworkdir: {tmp_path / 'w'}\n")
    proc = _run(IMMUNOPROFILE, "run", str(cfg))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("immunoprofile run: error: samplesheet")
    for fragment in (
        "sample_id 'S 1'",
        "timepoint_months '-1'",
        "response 'maybe'",
        "path 'x.h5' does not exist",
    ):
        assert fragment in lines[0]
    assert not (tmp_path / "w").exists()


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


def test_power_through_the_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"workdir: {tmp_path / 'w'}\ncluster: {{n_workers: 2, threads_per_worker: 1}}\n"
        "power: {patients: [8, 12], methods: [glmm]}\n"
    )
    proc = _run(IMMUNOPROFILE, "power", str(cfg), "--n-cohorts", "10", "--power-cohorts", "10")
    assert proc.returncode == 0, proc.stderr
    assert "type-I error at alpha 0.05" in proc.stdout
    out = tmp_path / "w" / "power"  # the default: WORKDIR/power
    assert {p.name for p in out.iterdir()} >= {"type1.csv", "power.csv", "summary.json"}
    power = pd.read_csv(out / "power.csv")
    assert sorted(set(power["n_patients"])) == [8, 12]
    bad = _run(IMMUNOPROFILE, "power", str(cfg), "--n-cohorts", "0")
    assert bad.returncode == 1
    assert "--n-cohorts: Input should be greater than or equal to 10" in bad.stderr
