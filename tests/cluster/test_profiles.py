"""Cluster profiles: the job scripts dask-jobqueue writes for each batch system, and the
dashboard link printed at start."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from distributed import LocalCluster

from cluster.config import ClusterConfig, JobqueueConfig
from cluster.launch import dashboard_link, jobqueue_cluster, start_client

JQ = JobqueueConfig(
    queue="compute", account="lupus01", walltime="01:30:00", cores=4, memory="16GiB",
    processes=2, job_script_prologue=["module load python/3.11", "source .venv/bin/activate"],
)  # fmt: skip
DIRECTIVE = {"slurm": "#SBATCH", "pbs": "#PBS", "sge": "#$", "lsf": "#BSUB"}


@pytest.mark.parametrize("profile", ["slurm", "pbs", "sge", "lsf"])
def test_job_script_carries_the_profile(profile: str) -> None:
    cluster = jobqueue_cluster(ClusterConfig(profile=profile, jobqueue=JQ), scale=False)  # type: ignore[arg-type]
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert DIRECTIVE[profile] in script
    assert "compute" in script and "lupus01" in script
    assert "module load python/3.11" in script and "source .venv/bin/activate" in script
    assert "--nworkers 2" in script and "--nthreads 2" in script
    # the scheduler is reachable from the compute nodes: not bound to localhost only
    assert "tcp://127.0.0.1" not in script


def test_local_dashboard_link_is_on_localhost(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ClusterConfig(n_workers=1, threads_per_worker=1, memory_limit="1GiB")
    with start_client(cfg) as client:
        link = dashboard_link(client, cfg)
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert f"dashboard at {link}" in capsys.readouterr().err


def test_address_profile_connects_to_a_running_scheduler() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as running:  # fmt: skip
        cfg = ClusterConfig(profile="address", address=running.scheduler_address)
        with start_client(cfg, quiet=True) as client:
            assert client.submit(sum, [4, 5]).result() == 9
        assert running.scheduler.workers  # the cluster was not ours to close


def _block(i: int) -> np.ndarray:
    return np.full(6_000_000, i, dtype=np.float64)  # 48 MB


def _first(block: np.ndarray) -> float:
    return float(block[0])


def test_tight_worker_memory_spills_and_finishes(tmp_path: Path) -> None:
    """Two workers limited to 600 MiB hold 24 results of 48 MB (1.15 GB): they spill to
    disk (or pause) instead of dying, and the computation completes exactly."""
    cfg = ClusterConfig(n_workers=2, threads_per_worker=1, memory_limit="600MiB")
    with start_client(cfg, quiet=True) as client:
        pids = set(client.run(os.getpid).values())
        blocks = client.map(_block, range(24), pure=False)
        firsts = client.gather(client.map(_first, blocks, pure=False))
        assert firsts == list(range(24))
        spilled = client.run(lambda dask_worker: len(dask_worker.data.slow))
        assert sum(spilled.values()) > 0, "nothing was spilled to disk"
        assert set(client.run(os.getpid).values()) == pids, "a worker died"
