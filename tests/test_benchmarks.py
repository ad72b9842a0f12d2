"""The benchmark runners keep working: the scaling runner on a tiny cohort, the sampler's
memory cap. The full-size runs and their figures are in docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.registry import STAGE_NAMES as STAGE_ORDER

from .conftest import CommandRun

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from measure import measure  # noqa: E402
from scaling import stage_rows  # noqa: E402
from task_time import summary, task_name  # noqa: E402
from timeline_peaks import peak_moments  # noqa: E402


def test_memory_cap_kills_the_whole_process_tree() -> None:
    """A baseline that outgrows the cap is stopped and reported, not left to swap."""
    grow = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "x = b'x' * (700 * 2**20); time.sleep(60)"
    )
    result = measure([sys.executable, "-c", grow], memory_cap_gib=0.5)
    assert result["killed"] == "memory cap"
    assert result["returncode"] != 0 and result["wall_s"] < 30
    assert result["peak_rss_gib"] > 0.5 and result["max_processes"] == 2


def test_task_time_sums_each_task_function_without_its_token() -> None:
    assert task_name("_refine_part-1cc969c8-010c-47de-bfbc-0123456789ab") == "_refine_part"
    assert task_name(("gram-0f1e2d3c4b5a69788796a5b4c3d2e1f0", 3)) == "gram"
    assert task_name("finalize-hlg") == "finalize-hlg"
    stream = [
        {"key": "f-1cc969c8-010c-47de-bfbc-0123456789ab",
         "startstops": [{"action": "compute", "start": 0.0, "stop": 2.0}]},
        {"key": "f-2cc969c8-010c-47de-bfbc-0123456789ab",
         "startstops": [{"action": "transfer", "start": 0.0, "stop": 0.5},
                        {"action": "compute", "start": 1.0, "stop": 4.0}]},
    ]  # fmt: skip
    assert summary(stream) == [("f", "compute", 2, 5.0), ("f", "transfer", 1, 0.5)]


def test_stages_are_cut_from_the_timeline() -> None:
    # samples: unix time, RSS of all processes, CPU so far, driver RSS, largest other RSS,
    # driver CPU so far
    gib = 2**30
    timeline = [[t, (1 + (t == 12)) * gib, 2.0 * t, gib // 2, gib // 4 + (t == 3) * gib // 4, t]
                for t in range(20)]  # fmt: skip
    log = [
        {"stage": "ingest", "status": "done", "started_unix": 2.0, "seconds": 5.0},
        {"stage": "qc", "status": "done", "started_unix": 9.0, "seconds": 4.0},
    ]
    rows = stage_rows(timeline, log, cells=1000, wall=20.0)
    assert [r["cpu_s"] for r in rows] == [10.0, 8.0]
    assert [r["driver_cpu_s"] for r in rows] == [5.0, 4.0]
    assert [r["peak_rss_gib"] for r in rows] == [1.0, 2.0]
    assert [r["driver_peak_rss_gib"] for r in rows] == [0.5, 0.5]
    assert [r["others_peak_rss_gib"] for r in rows] == [0.5, 1.5]
    assert [r["largest_other_peak_rss_gib"] for r in rows] == [0.5, 0.25]
    assert [r["cells_per_s"] for r in rows] == [200, 250]
    assert [r["share"] for r in rows] == [0.25, 0.2]
    # where in each stage: qc's peak over all processes 3 s in, ingest's worker peak 1 s in
    moments = peak_moments(timeline, log)
    assert [m["peak_at_s"] for m in moments] == [0.0, 3.0]
    assert [m["peak_gib"] for m in moments] == [1.0, 2.0]
    assert moments[1]["driver_at_peak_gib"] == 0.5
    assert moments[1]["largest_other_at_peak_gib"] == 0.25
    assert moments[0]["largest_other_peak_at_s"] == 1.0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("scaling")
    out = root / "results.jsonl"
    command = [sys.executable, str(BENCHMARKS / "scaling.py"), "--sizes", "tiny",
               "--root", str(root), "--json", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return out, json.loads(out.read_text())


def test_scaling_runner_measures_every_stage_and_the_baseline(tiny_run: tuple[Path, dict]) -> None:
    out, record = tiny_run
    run = record["pipeline"]
    assert run["returncode"] == 0 and run["samples"] == 4 * 3
    assert [s["stage"] for s in run["stages"]] == list(STAGE_ORDER)
    for stage in run["stages"]:
        assert stage["status"] == "done" and stage["wall_s"] > 0 and stage["cpu_s"] >= 0
        if stage["wall_s"] > 1:  # CPU is sampled every 0.1 s: a shorter stage may see none
            assert stage["cpu_s"] > 0
        # the driver, a scheduler and two workers are all counted
        assert stage["peak_rss_gib"] > stage["driver_peak_rss_gib"] > 0.05
        assert stage["peak_rss_gib"] <= run["peak_rss_gib"]
    assert run["max_processes"] >= 3
    staged = sum(s["wall_s"] for s in run["stages"])
    assert staged + run["outside_stages_s"] == pytest.approx(run["wall_s"], abs=0.05)
    assert 0.5 < sum(s["share"] for s in run["stages"]) < 1
    assert 0.8 * run["cells"] < run["cells_after_qc"] < run["cells"]
    assert 0 < run["per_cell_outputs_gib"] < run["peak_rss_gib"]
    timeline = json.loads((out.parent / "tiny" / "timeline.json").read_text())
    assert len(timeline) >= 10 and len(timeline[0]) == 6  # the run's samples, kept
    scanpy = record["scanpy"]
    assert scanpy["status"] == "ok" and scanpy["cells"] == run["cells"]
    assert list(scanpy["seconds"]) == [
        "read", "qc", "hvg", "normalize_pca", "harmony", "neighbors", "leiden", "umap"
    ]  # fmt: skip
    # the same QC rules on the same cells: within a few doublet calls of each other
    assert scanpy["cells_after_qc"] == pytest.approx(run["cells_after_qc"], rel=0.03)


def test_scaling_runner_from_a_stage_on_keeps_the_workdir(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    root = out.parent
    again = root / "again.jsonl"
    command = [sys.executable, str(BENCHMARKS / "scaling.py"), "--sizes", "tiny",
               "--root", str(root), "--json", str(again), "--no-scanpy", "--force", "predict"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    record = json.loads(again.read_text())
    assert record["force"] == "predict"
    stages = {s["stage"]: s["status"] for s in record["pipeline"]["stages"]}
    assert list(stages) == list(STAGE_ORDER)  # this run's log lines only, once each
    assert stages["annotate"] == "skipped" and stages["expression"] == "skipped"
    assert stages["predict"] == "done" and stages["report"] == "done"


def test_pca_accuracy_against_scanpy_on_the_tiny_run(tiny_run: tuple[Path, dict]) -> None:
    """The exact out-of-core PCA matches scanpy's on the tiny cohort's own HVGs; the
    subsampled fit is measured beside it."""
    out, _ = tiny_run
    result = out.parent / "pca.jsonl"
    command = [sys.executable, str(BENCHMARKS / "pca_accuracy.py"), str(out.parent / "tiny" / "work"),
               "--max-cells", "1000", "--json", str(result)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    record = json.loads(result.read_text())
    assert record["min_abs_r_first20_exact"] >= 0.99
    assert len(record["abs_r_first20_1000"]) == 20 and record["abs_r_first20_1000"][0] >= 0.99
    assert record["kept"] > 1000 and record["hvgs"] == 500


def test_scaling_report_tables_and_plot(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    results, record = tiny_run
    plot = tmp_path / "scaling.png"
    command = [sys.executable, str(BENCHMARKS / "scaling_report.py"), str(results),
               "--plot", str(plot)]  # fmt: skip
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    assert f"| tiny | 12 | {record['pipeline']['cells']:,}" in text
    for stage in STAGE_ORDER:
        assert f"| {stage} | " in text
    assert "| umap | " in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workdir_comparison_finds_every_kind_of_difference(
    tmp_path: Path, analysed_small: CommandRun
) -> None:
    """`compare_workdirs.py` (before/after a refactoring): a copy is equal; a changed
    array value, a changed table cell and a store that is only on one side are named."""
    import shutil

    import numpy as np
    import pandas as pd
    import zarr
    from compare_workdirs import compare_workdirs

    before = analysed_small.workdir
    after = tmp_path / "after"
    shutil.copytree(before, after)
    same = compare_workdirs(before, after)
    assert same["equal"] and same["stores"] >= 20 and same["arrays"] > 100, same
    umap = zarr.open_array(str(after / "cohort.zarr" / "obsm" / "X_umap"), mode="r+")
    values = umap[...]
    values[7, 1] = np.nextafter(values[7, 1], np.inf)
    umap[...] = values
    tests = pd.read_csv(after / "abundance" / "tests.csv", float_precision="round_trip")
    tests.loc[tests["estimate"].first_valid_index(), "estimate"] += 1e-9
    tests.to_csv(after / "abundance" / "tests.csv", index=False)
    first = sorted((after / "samples").glob("*.zarr"))[0]
    shutil.copytree(first, after / "samples" / "extra.zarr")
    diff = compare_workdirs(before, after)["differences"]
    assert len(diff["cohort.zarr"]) == 1
    assert diff["cohort.zarr"][0].startswith("obsm/X_umap: 1 values differ")
    assert diff["abundance/tests.csv"] == ["column estimate: 1 values differ, max |diff| 1e-09"]
    assert diff["samples/extra.zarr"] == ["only after"]
    # a tolerance forgives float rounding, not a missing store
    loose = compare_workdirs(before, after, rtol=1e-6)["differences"]
    assert list(loose) == ["samples/extra.zarr"]


def test_projection_fits_each_stage_through_the_two_sizes(tmp_path: Path) -> None:
    """Driver CPU stays on one core, the workers' spreads over nodes x cores; memory is
    the two sizes' line."""
    from projection import load_fits, table

    def line(size: str, cells: int, scale: float) -> dict:
        stages = [
            {"stage": "graph", "cpu_s": 110.0 * scale, "driver_cpu_s": 10.0 * scale,
             "driver_peak_rss_gib": 1.0 + (scale - 1) / 3, "others_peak_rss_gib": 1.0 + scale},
            {"stage": "report", "cpu_s": 5.0, "driver_cpu_s": 5.0,
             "driver_peak_rss_gib": 1.0, "others_peak_rss_gib": 1.0},
        ]  # fmt: skip
        return {
            "size": size,
            "run": "r1",
            "commit": "abc",
            "pipeline": {"cells": cells, "stages": stages},
        }

    results = tmp_path / "scaling.jsonl"
    results.write_text(
        json.dumps(line("1M", 10**6, 1.0)) + "\n" + json.dumps(line("4M", 4 * 10**6, 4.0)) + "\n"
    )
    fits, meta = load_fits(results, None, ("1M", "4M"))
    assert meta["run"] == "r1" and [f.stage for f in fits] == ["graph", "report"]
    graph, report = fits
    assert graph.exponent(graph.driver_cpu) == pytest.approx(1.0)
    driver, workers = graph.seconds(16e6, nodes=2, cores=4)
    assert driver == pytest.approx(160.0) and workers == pytest.approx(1600.0 / 8)
    assert graph.driver_memory(10e6) == pytest.approx(2.0 + 6.0 / 3)
    assert graph.workers_per_cell_memory(10e6) == pytest.approx(10.0)
    assert report.seconds(50e6, 64, 32) == pytest.approx((5.0, 0.0))  # flat: not extrapolated up
    text = table(fits, [16e6], [2], cores=4)
    assert "| graph | 10 -> 40 (1.00) | 100 -> 400 (1.00) | 160 + 200 |" in text
    assert "**6 min**" in text  # (160 + 200 + 5) s
