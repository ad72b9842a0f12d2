"""Cluster profiles: the job scripts dask-jobqueue writes for each batch system, and the
dashboard link printed at start."""

from __future__ import annotations

import pytest

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
