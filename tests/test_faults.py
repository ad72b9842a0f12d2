"""Faults: a damaged sample store fails the run with a message naming its sample; a
worker killed in the middle of a stage changes nothing in its results; a run killed
outright resumes where it stopped and ends with the same results."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from pipeline.cli import main
from pipeline.config import RunConfig, parse_config
from pipeline.simulate import SimulationResult
from pipeline.store import read_manifest
from pipeline.workdir import Workdir


def _first_data_chunk(store: Path) -> Path:
    chunks = sorted(p for p in (store / "X" / "data").rglob("*")
                    if p.is_file() and p.name != "zarr.json")  # fmt: skip
    assert chunks, f"no chunk files under {store / 'X' / 'data'}"
    return chunks[0]


def test_damaged_sample_store_fails_the_run_naming_the_sample(
    tmp_path: Path,
    ingested: Path,
    small_cohort: SimulationResult,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(ingested, workdir)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: {n_workers: 2, threads_per_worker: 1}\n"
                   "preprocess: {n_top_genes: 300, n_comps: 10}\n")  # fmt: skip
    args = ["run", str(cfg), "--workdir", str(workdir), "--samplesheet",
            str(small_cohort.samplesheet)]  # fmt: skip
    sample_id = sorted(p.stem for p in (workdir / "samples").glob("*.zarr"))[1]
    chunk = _first_data_chunk(Workdir(workdir).sample_store(sample_id))
    good = chunk.read_bytes()
    damaged = b"\x00garbage" * (len(good) // 8 + 1)

    chunk.write_bytes(damaged)
    assert main([*args, "--until", "qc"]) == 1
    err = capsys.readouterr().err
    assert f"{sample_id}.zarr could not be read" in err and "KilledWorker" not in err

    # repaired, QC runs; damaged again, preprocess (which reads the stores lazily) fails
    # and the run checks the stores against their manifests to name the sample
    chunk.write_bytes(good)
    assert main([*args, "--until", "qc"]) == 0
    chunk.write_bytes(damaged)
    capsys.readouterr()
    assert main([*args, "--until", "preprocess"]) == 1
    err = capsys.readouterr().err
    assert f"the store of sample(s) {sample_id} is damaged" in err


def _kill_a_worker_once_busy(client: Client, done: threading.Event, report: dict) -> None:
    """Wait until tasks are running, then SIGKILL one worker process (its nanny starts a
    new one); the scheduler reschedules the lost tasks."""
    pids = client.run(os.getpid)
    while not done.is_set():
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            report["killed"] = pids[busy[0]]
            os.kill(pids[busy[0]], signal.SIGKILL)
            return
        time.sleep(0.02)


def test_worker_killed_mid_stage_gives_the_same_result(
    tmp_path: Path, ingested: Path, client: Client
) -> None:
    """QC on a cluster whose busy worker is SIGKILLed mid-stage equals QC on the session's
    cluster without the kill: every metric, flag, score and per-gene sum."""
    from pipeline.stages import run_stage

    outputs = {}
    for name in ("reference", "killed"):
        workdir = tmp_path / name
        shutil.copytree(ingested, workdir)
        cfg = parse_config({"workdir": str(workdir)})
        if name == "reference":
            run_stage("qc", cfg, client)
        else:
            with (
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address=":0", memory_limit="3GiB") as cluster,
                Client(cluster) as own,
            ):  # fmt: skip
                report: dict = {}
                done = threading.Event()
                killer = threading.Thread(target=_kill_a_worker_once_busy, args=(own, done, report))
                killer.start()
                run_stage("qc", cfg, own)
                done.set()
                killer.join()
                assert report.get("killed"), "no worker was killed while QC ran"
                assert report["killed"] not in own.run(os.getpid).values()
        outputs[name] = ad.read_zarr(workdir / "cohort.zarr")
    ref, got = outputs["reference"], outputs["killed"]
    pd.testing.assert_frame_equal(got.obs, ref.obs)
    np.testing.assert_array_equal(got.varm["qc_counts_sum"], ref.varm["qc_counts_sum"])


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_redoes_only_the_interrupted_stage(
    tmp_path: Path, strong_batch_run: RunConfig, strong_batch_cohort: ad.AnnData
) -> None:
    """SIGKILL to the whole run (driver and its local workers) while `integrate` runs;
    the re-run skips QC and preprocessing (their digests are in cohort.zarr's manifest),
    redoes integrate and graph, and ends with the uninterrupted run's results."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'work'}\nsamplesheet: {strong_batch_run.samplesheet}\n"
        "cluster: {n_workers: 2, threads_per_worker: 1}\n"
        "preprocess: {n_top_genes: 1000, n_comps: 30}\n"
    )
    command = [sys.executable, "-m", "pipeline", "run", str(config), "--until", "graph"]
    log = tmp_path / "work" / "logs" / "stages.jsonl"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and '"stage": "preprocess", "status": "done"' in log.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    time.sleep(1.0)  # into integrate
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = read_manifest(tmp_path / "work" / "cohort.zarr")
    assert manifest is not None and set(manifest["stages"]) == {"ingest", "qc", "preprocess"}
    lock = Workdir(tmp_path / "work").lock_file
    assert lock.exists()  # the killed run could not release its lock: the re-run takes it

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"cleared a stale lock left by `immunoprofile {' '.join(command[3:])}`" in rerun.stderr
    assert not lock.exists()
    assert "qc: unchanged inputs and parameters, skipped" in rerun.stdout
    assert "preprocess: unchanged inputs and parameters, skipped" in rerun.stdout
    assert "integrate: harmony on" in rerun.stdout and "graph: " in rerun.stdout
    got = ad.read_zarr(tmp_path / "work" / "cohort.zarr")
    pd.testing.assert_frame_equal(got.obs, strong_batch_cohort.obs)
    for key in ("X_pca", "X_pca_harmony", "X_umap"):
        np.testing.assert_array_equal(got.obsm[key], strong_batch_cohort.obsm[key], err_msg=key)
    assert not [p for p in (tmp_path / "work").iterdir() if ".tmp-" in p.name or ".old-" in p.name]
