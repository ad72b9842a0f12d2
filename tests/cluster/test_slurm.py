"""The ``slurm`` profile end to end: Dask workers as real jobs of a single-node SLURM.

The module fixture starts SLURM on this machine with ``.ci/slurm/setup.sh`` (installs
slurm-wlm and munge with apt-get if needed; needs root) and stops it with
``.ci/slurm/teardown.sh``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from distributed import Client
from distributed.security import Security

from cluster.config import ClusterConfig, JobqueueConfig
from cluster.errors import ClusterError
from cluster.launch import start_client
from pipeline.config import RunConfig, parse_config
from pipeline.simulate import SimulationResult

ROOT = Path(__file__).resolve().parents[2]
SLURM_CI = ROOT / ".ci" / "slurm"
WORKER_TIMEOUT = 120  # seconds for both worker jobs to start and connect


def _run_script(name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SLURM_CI / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _fail_with_output(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    pytest.fail(
        f"{what} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
        pytrace=False,
    )


def _squeue(*fields: str) -> list[list[str]]:
    """One row per job: the requested squeue format fields (e.g. '%i', '%j', '%T')."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "|".join(fields)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def _logs(directory: Path) -> str:
    return "\n".join(
        f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted(directory.glob("*"))
        if path.is_file()
    )


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A running single-node SLURM (partition 'debug'), stopped after the module."""
    start = time.perf_counter()
    try:
        proc = _run_script("setup.sh", timeout=480)  # under pytest-timeout (600 s)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"setup.sh timed out:\n{exc.stdout!r}\n{exc.stderr!r}", pytrace=False)
    if proc.returncode != 0:
        _fail_with_output("setup.sh", proc)
    print(
        f"\nSLURM setup: {time.perf_counter() - start:.1f}s\n{proc.stdout}",
        file=sys.stderr,
    )
    try:
        yield
    finally:
        proc = _run_script("teardown.sh", timeout=120)
        if proc.returncode != 0:
            _fail_with_output("teardown.sh", proc)


def test_dask_workers_run_as_slurm_jobs(slurm: None, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    cfg = ClusterConfig(
        profile="slurm",
        jobqueue=JobqueueConfig(
            queue="debug",
            cores=1,
            memory="2GiB",
            processes=1,
            walltime="00:30:00",
            min_jobs=2,
            max_jobs=2,
            local_directory=str(tmp_path / "worker-space"),
            log_directory=str(logs),
            shared_temp_directory=str(tmp_path / "tls"),
        ),
    )
    start = time.perf_counter()
    with start_client(cfg, quiet=True) as client:
        try:
            client.wait_for_workers(2, timeout=WORKER_TIMEOUT)
        except TimeoutError:
            pytest.fail(
                f"2 workers did not connect within {WORKER_TIMEOUT}s\n"
                f"squeue: {_squeue('%i', '%j', '%T', '%R')}\n{_logs(logs)}",
                pytrace=False,
            )
        print(f"\n2 SLURM workers up in {time.perf_counter() - start:.1f}s", file=sys.stderr)

        jobs = _squeue("%i", "%j", "%T")
        running = [job for job in jobs if job[2] == "RUNNING"]
        assert len(running) == 2, jobs
        assert all(name.startswith("dask-worker") for _, name, _ in running), jobs

        # Each worker is a process of one of those jobs.
        job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert sorted(job_ids.values()) == sorted(job_id for job_id, _, _ in running)
        # with glibc's heap reused for temporaries and its arenas limited (one task
        # thread per job, and the main one), as on the local profile
        malloc = client.run(lambda: (os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                                     os.environ.get("MALLOC_ARENA_MAX")))  # fmt: skip
        assert set(malloc.values()) == {(str(32 * 2**20), "2")}

        assert client.submit(sum, range(100)).result() == 4950
        x = da.arange(1_000_000, chunks=100_000)
        assert int(client.compute(x.sum()).result()) == 499_999_500_000

        # TLS by default: the workers connected over tls://, and a client without the
        # run's certificate (another CA's, or none over plain TCP) is refused
        address = client.scheduler_info()["address"]
        assert address.startswith("tls://")
        assert all(w.startswith("tls://") for w in client.scheduler_info()["workers"])
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=Security.temporary(), timeout=5)
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=5)

    # Closing the client cancels the worker jobs.
    deadline = time.monotonic() + 60
    while _squeue("%i") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue("%i", "%j", "%T") == []


def test_worker_jobs_the_node_cannot_run_are_reported_then_fail(
    slurm: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """configs/slurm.yaml's request (8 cores, 32 GiB per job) on this 2-CPU node: the jobs
    stay pending; the user is told why (squeue's reason next to the partition's limits)
    and the command fails after the timeout instead of waiting forever."""
    cfg = ClusterConfig(
        profile="slurm",
        jobqueue=JobqueueConfig(queue="debug", cores=8, memory="32GiB", processes=4,
                                walltime="00:10:00", min_jobs=1, max_jobs=1,
                                log_directory=str(tmp_path / "logs"),
                                shared_temp_directory=str(tmp_path / "tls"),
                                pending_report_after=3, pending_timeout=12),
    )  # fmt: skip
    start = time.perf_counter()
    with pytest.raises(ClusterError) as err, start_client(cfg, quiet=True):
        pass
    assert time.perf_counter() - start < 60
    message = str(err.value)
    assert message.startswith("no Dask worker started within 12 s")
    assert re.search(r"squeue says \(job, state, reason\): \d+ PENDING \(?\w+", message), message
    assert "each job asks for 8 cores, 32GiB and 00:10:00 on queue debug" in message
    assert re.search(r"the partition offers: debug\*? CPUs/node=\d+ memory/node=\d+MB", message)
    assert "waiting for the worker jobs" in capsys.readouterr().err
    deadline = time.monotonic() + 60  # the pending job was cancelled on the way out
    while _squeue("%i") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue("%i", "%T", "%R") == []


def test_pipeline_with_slurm_workers_equals_the_local_run(
    slurm: None,
    tmp_path: Path,
    strong_batch_run: RunConfig,
    strong_batch_cohort: ad.AnnData,
    client: Client,
) -> None:
    """The stages whose tasks run on the workers, with the workers as SLURM jobs: ingest,
    QC and PCA from the same inputs and config, then annotation of the local run's graph,
    equal the LocalCluster run's results bit for bit (`strong_batch_run`; Harmony, the
    graph and UMAP run in the driver on these per-cell results)."""
    from pipeline.ingest import ingest_samples, read_samplesheet
    from pipeline.stages import run_stage

    assert strong_batch_run.samplesheet is not None
    cluster = ClusterConfig(
        profile="slurm",
        jobqueue=JobqueueConfig(queue="debug", cores=1, memory="3GiB", processes=1,
                                walltime="00:30:00", min_jobs=2, max_jobs=2,
                                local_directory=str(tmp_path / "worker-space"),
                                log_directory=str(tmp_path / "logs")),
    )  # fmt: skip
    cfg = strong_batch_run.model_copy(update={"workdir": tmp_path / "work", "cluster": cluster})
    with start_client(cfg.cluster, quiet=True) as slurm_client:
        slurm_client.wait_for_workers(2, timeout=WORKER_TIMEOUT)
        assert len(_squeue("%i")) == 2
        ingest_samples(read_samplesheet(cfg.samplesheet), workdir=cfg.workdir, client=slurm_client)
        for stage in ("qc", "preprocess"):
            run_stage(stage, cfg, slurm_client)
        annotated = {}
        for name in ("slurm", "local"):
            workdir = tmp_path / f"annotate_{name}"
            shutil.copytree(strong_batch_run.workdir, workdir)
            annotate_cfg = strong_batch_run.model_copy(update={"workdir": workdir})
            run_stage("annotate", annotate_cfg, slurm_client if name == "slurm" else client)
            annotated[name] = ad.read_zarr(workdir / "cohort.zarr").obs
    labels = ["lineage", "lineage_confidence", "b_subset", "b_subset_confidence"]
    pd.testing.assert_frame_equal(annotated["slurm"][labels], annotated["local"][labels])
    got = ad.read_zarr(Path(cfg.workdir) / "cohort.zarr")
    want = strong_batch_cohort
    qc_columns = [c for c in got.obs.columns if not c.startswith(("leiden_", "lineage"))]
    pd.testing.assert_frame_equal(got.obs[qc_columns], want.obs[qc_columns])
    np.testing.assert_array_equal(got.obsm["X_pca"], want.obsm["X_pca"])
    np.testing.assert_array_equal(got.varm["PCs"], want.varm["PCs"])


@pytest.mark.slow
def test_whole_run_submitted_as_one_slurm_job(
    slurm: None, tmp_path: Path, small_cohort: SimulationResult
) -> None:
    """Batch mode: `sbatch cluster/immunoprofile.sbatch CONFIG` runs the driver as a job,
    which starts its workers as further jobs (1 CPU each on this 2-CPU node)."""
    config = tmp_path / "slurm.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'work'}\n"
        f"samplesheet: {small_cohort.samplesheet}\n"
        "cluster:\n  profile: slurm\n  jobqueue:\n    queue: debug\n    cores: 1\n"
        "    memory: 2GiB\n    walltime: '00:30:00'\n    min_jobs: 1\n    max_jobs: 1\n"
        f"    log_directory: {tmp_path / 'logs'}\n"
    )
    env = {**os.environ, "IMMUNOPROFILE_VENV": str(Path(sys.executable).parents[1])}
    proc = subprocess.run(
        ["sbatch", "--wait", "--cpus-per-task=1", "--mem=3G", f"--chdir={tmp_path}",
         f"--output={tmp_path}/driver-%j.log", str(ROOT / "cluster" / "immunoprofile.sbatch"),
         str(config), "--until", "qc"],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )  # fmt: skip
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("driver-*.log"))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}\n{_logs(tmp_path / 'logs')}"
    assert "immunoprofile driver: job" in logs and "Dask cluster (slurm)" in logs
    assert "qc: " in logs and "cells pass" in logs
    assert (tmp_path / "work" / "cohort.zarr").exists()
    assert list((tmp_path / "logs").glob("dask-worker-*.err")), "no worker job ran"


def _cancel_one_job_when_busy(client: Client, done: threading.Event, cancelled: list[str]) -> None:
    while not done.is_set():
        if any(client.processing().values()):
            job = _squeue("%i")[0][0]
            subprocess.run(["scancel", job], check=True, timeout=30)
            cancelled.append(job)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_cancelled_worker_job_mid_stage_the_run_completes(
    slurm: None, tmp_path: Path, ingested: Path, client: Client
) -> None:
    """`scancel` of one worker job while QC tasks run: the stage completes on the other
    worker (adaptive scaling starts a new job), with the local run's results."""
    from pipeline.stages import run_stage

    local, remote = tmp_path / "local", tmp_path / "slurm"
    shutil.copytree(ingested, local)
    shutil.copytree(ingested, remote)
    run_stage("qc", parse_config({"workdir": str(local)}), client)
    cluster = ClusterConfig(
        profile="slurm",
        jobqueue=JobqueueConfig(queue="debug", cores=1, memory="2GiB", processes=1,
                                walltime="00:30:00", min_jobs=2, max_jobs=2,
                                log_directory=str(tmp_path / "logs")),
    )  # fmt: skip
    with start_client(cluster, quiet=True) as slurm_client:
        slurm_client.wait_for_workers(2, timeout=WORKER_TIMEOUT)
        done, cancelled = threading.Event(), []
        canceller = threading.Thread(target=_cancel_one_job_when_busy,
                                     args=(slurm_client, done, cancelled))  # fmt: skip
        canceller.start()
        run_stage("qc", parse_config({"workdir": str(remote)}), slurm_client)
        done.set()
        canceller.join()
        assert cancelled, "no job was cancelled while QC ran"
        assert cancelled[0] not in [row[0] for row in _squeue("%i")]
    got, want = ad.read_zarr(remote / "cohort.zarr"), ad.read_zarr(local / "cohort.zarr")
    pd.testing.assert_frame_equal(got.obs, want.obs)
