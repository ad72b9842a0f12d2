"""Cluster profiles: the job scripts dask-jobqueue writes for each batch system (TLS by
default, no control characters), the addresses a local cluster listens on, and the
dashboard link printed at start."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import psutil
import pytest
from distributed import LocalCluster
from distributed.security import Security
from pydantic import ValidationError

from cluster.config import ClusterConfig, JobqueueConfig
from cluster.errors import ClusterError
from cluster.launch import dashboard_link, jobqueue_cluster, jobqueue_security, start_client

JQ = JobqueueConfig(
    queue="compute", account="lupus01", walltime="01:30:00", cores=4, memory="16GiB",
    processes=2, job_script_prologue=["module load python/3.11", "source .venv/bin/activate"],
)  # fmt: skip
DIRECTIVE = {"slurm": "#SBATCH", "pbs": "#PBS", "sge": "#$", "lsf": "#BSUB"}


def _script(cfg: ClusterConfig) -> str:
    return _script_and_files(cfg)[0]


def _script_and_files(cfg: ClusterConfig) -> tuple[str, dict[str, int]]:
    """The job script, and the files in the TLS folder while the cluster lives (they
    go with it) with their permission bits."""
    cluster = jobqueue_cluster(cfg, scale=False)
    try:
        folder = Path(os.path.expanduser(cfg.jobqueue.shared_temp_directory))
        files = {str(f): f.stat().st_mode & 0o777 for f in sorted(folder.glob("*"))}
        return str(cluster.job_script()), files
    finally:
        cluster.close()


@pytest.mark.parametrize("profile", ["slurm", "pbs", "sge", "lsf"])
def test_job_script_carries_the_profile_and_tls(profile: str, tmp_path: Path) -> None:
    jq = JQ.model_copy(update={"shared_temp_directory": str(tmp_path / "tls")})
    script, files = _script_and_files(ClusterConfig(profile=profile, jobqueue=jq))  # type: ignore[arg-type]
    assert DIRECTIVE[profile] in script
    assert "compute" in script and "lupus01" in script
    assert "module load python/3.11" in script and "source .venv/bin/activate" in script
    assert f"export MALLOC_MMAP_THRESHOLD_={32 * 2**20}" in script
    assert "export MALLOC_ARENA_MAX=3" in script  # 2 task threads per worker, and the main
    assert "--nworkers 2" in script and "--nthreads 2" in script
    # the scheduler is reachable from the compute nodes over TLS only, with the run's own
    # certificates, which only the user can read
    assert "tls://" in script and "tcp://" not in script
    assert sorted(Path(f).name.split(".")[3] for f in files) == ["ca_file", "cert", "key"]
    for f, mode in files.items():
        assert f in script and mode & 0o077 == 0, (f, oct(mode))
    assert (tmp_path / "tls").stat().st_mode & 0o077 == 0


def test_tls_off_only_when_asked_and_then_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jq = JQ.model_copy(update={"tls": False, "shared_temp_directory": str(tmp_path / "t")})
    script = _script(ClusterConfig(profile="slurm", jobqueue=jq))
    assert "tcp://" in script and "--tls-" not in script
    assert "anyone who can reach its port can run code as you" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_site_tls_files_are_used_for_every_role(tmp_path: Path) -> None:
    made = Security.temporary()  # stands in for the site's CA and certificate
    files = {}
    for name, pem in (("ca.pem", made.tls_ca_file), ("cert.pem", made.tls_client_cert),
                      ("key.pem", made.tls_client_key)):  # fmt: skip
        assert pem is not None
        files[name] = tmp_path / name
        files[name].write_text(pem)
    jq = JobqueueConfig(tls_ca_file=str(files["ca.pem"]), tls_cert=str(files["cert.pem"]),
                        tls_key=str(files["key.pem"]))  # fmt: skip
    security = jobqueue_security(jq)
    assert security is not None and security.require_encryption
    assert security.tls_worker_cert == str(files["cert.pem"])
    assert security.tls_scheduler_key == str(files["key.pem"])
    script = _script(ClusterConfig(profile="slurm", jobqueue=jq))
    assert f"--tls-ca-file {files['ca.pem']}" in script and "tls://" in script
    with pytest.raises(ClusterError, match=r"cluster.jobqueue.tls_key /nonexistent: no such"):
        jobqueue_security(jq.model_copy(update={"tls_key": "/nonexistent"}))
    with pytest.raises(ValidationError, match="given together"):
        JobqueueConfig(tls_ca_file=str(files["ca.pem"]))


@pytest.mark.parametrize(
    ("field", "value"),
    [("queue", "debug\n#PBS -l nodes=100"), ("account", "a\rb"), ("walltime", "01:00:00\x00"),
     ("job_script_prologue", ["module load x", "echo ok\nrm -rf ~"]),
     ("job_extra_directives", ["--gres=gpu:1\t"])],
)  # fmt: skip
def test_control_characters_never_reach_a_job_script(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match="contains the control character"):
        JobqueueConfig.model_validate({field: value})


def test_a_config_with_a_newline_in_a_queue_name_names_the_key(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text('cluster:\n  profile: pbs\n  jobqueue:\n    queue: "batch\\necho pwned"\n')
    with pytest.raises(ConfigError, match=r"cluster\.jobqueue\.queue.*control character"):
        load_config(cfg)


def test_local_profile_listens_on_localhost_only() -> None:
    """The sockets the scheduler, dashboard, nannies and workers really listen on (not
    the printed link, which is built from the config string)."""
    cfg = ClusterConfig(n_workers=2, threads_per_worker=1, memory_limit="1GiB")
    with start_client(cfg, quiet=True) as client:
        workers = set(client.run(os.getpid).values())
        pids = (workers | {psutil.Process(p).ppid() for p in workers}) - {os.getpid()}

        def listening(pid: int) -> list[tuple[str, int]]:
            return [(c.laddr.ip, c.laddr.port)
                    for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]  # fmt: skip

        scheduler_port = int(client.scheduler_info()["address"].rsplit(":", 1)[1])
        dashboard_port = client.scheduler_info()["services"]["dashboard"]
        # this process holds other clusters' sockets too (the session's): only ours
        ours = [a for a in listening(os.getpid()) if a[1] in (scheduler_port, dashboard_port)]
        ours += [a for pid in pids for a in listening(pid)]  # the workers and their nannies
        worker_ports = {int(a.rsplit(":", 1)[1]) for a in client.scheduler_info()["workers"]}
        assert {scheduler_port, dashboard_port, *worker_ports} <= {port for _, port in ours}
        assert len(ours) >= 2 + 2 * 2  # scheduler, dashboard; 2 workers and their nannies
        assert {ip for ip, _ in ours} == {"127.0.0.1"}, ours
        # distributed's MALLOC_TRIM_THRESHOLD_ kept, and a fixed mmap threshold with it
        # (cluster.launch.malloc_environ: NB fits 2.5x slower without it), one heap arena
        # per task thread and the main one
        malloc = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                     os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                                     os.environ.get("MALLOC_ARENA_MAX")))  # fmt: skip
        assert set(malloc.values()) == {("65536", str(32 * 2**20), "2")}


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
