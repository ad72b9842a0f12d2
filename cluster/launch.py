"""Start (or connect to) the Dask cluster a profile describes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import psutil
from distributed import Client, LocalCluster
from distributed.security import Security

from .config import ClusterConfig, JobqueueConfig
from .errors import ClusterError


def local_cluster_size(cfg: ClusterConfig) -> dict[str, Any]:
    """Workers, threads and memory of a LocalCluster sized from this machine.

    One single-threaded worker process per core on small machines (numeric kernels
    release the GIL unevenly, processes avoid contention), two threads per worker above
    four cores; memory split evenly, keeping 10% for the driver and scheduler.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    threads = cfg.threads_per_worker or (1 if cores <= 4 else 2)
    workers = cfg.n_workers or max(1, cores // threads)
    memory = cfg.memory_limit or int(psutil.virtual_memory().total * 0.9 / workers)
    return {"n_workers": workers, "threads_per_worker": threads, "memory_limit": memory}


# distributed starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back);
# setting that switches off glibc's adaptive mmap threshold, so every array above 128 KiB
# is a fresh mmap with its pages faulted in again: the expression stage's NB fits ran
# 2.5x slower in a worker than in a plain process (22.5 s against 9.2 s, T_CD4 at 1M
# cells, docs/benchmarks.md). A fixed threshold at glibc's adaptive maximum (32 MiB)
# lets temporaries reuse the heap; the stages still hand memory back (runtime.release_memory).
MMAP_THRESHOLD = 32 * 2**20


def malloc_environ(threads: int) -> dict[str, str]:
    """glibc's malloc settings for a worker process with ``threads`` task threads: the
    fixed mmap threshold above, and one heap arena per task thread plus the main one.
    glibc's default (8 arenas per core) gives the threads that zarr decodes chunks in,
    and BLAS's and faiss's, arenas of their own, whose freed memory the task thread
    cannot reuse: the graph and annotate stages of a 1M-cell cohort peaked 0.24 GiB
    higher over all processes without the limit (docs/benchmarks.md, issue #28)."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_ARENA_MAX": str(threads + 1)}


def worker_environ(threads: int = 1) -> dict[str, Any]:
    """distributed's environment for worker processes with `malloc_environ` added."""
    return {
        **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
        **malloc_environ(threads),
    }


JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
                     "lsf": "LSFCluster"}  # fmt: skip


TLS_OFF_WARNING = (
    "warning: cluster.jobqueue.tls is false: the scheduler accepts unencrypted, "
    "unauthenticated connections, and anyone who can reach its port can run code as you"
)


def jobqueue_security(jq: JobqueueConfig) -> Security | None:
    """TLS for scheduler, workers and client: the site's files, or a temporary CA and
    certificate made for this run (dask-jobqueue writes the workers' copy, readable by
    the user only, to ``shared_temp_directory``); None when ``tls`` is false."""
    if not jq.tls:
        return None
    if jq.tls_ca_file:
        files = {"ca_file": jq.tls_ca_file, "cert": jq.tls_cert, "key": jq.tls_key}
        for key, value in files.items():
            path = Path(os.path.expanduser(str(value)))
            if not path.is_file():
                msg = f"cluster.jobqueue.tls_{key} {value}: no such file"
                raise ClusterError(msg)
            files[key] = str(path)
        roles = {
            f"tls_{role}_{part}": files[part]
            for role in ("scheduler", "worker", "client")
            for part in ("cert", "key")
        }
        return Security(tls_ca_file=files["ca_file"], require_encryption=True, **roles)
    try:
        return Security.temporary()
    except ImportError as exc:  # pragma: no cover - cryptography is a dependency
        msg = f"TLS needs the 'cryptography' package ({exc})"
        raise ClusterError(msg) from exc


def jobqueue_cluster(cfg: ClusterConfig, *, scale: bool = True) -> Any:
    """The dask-jobqueue cluster of a ``slurm``/``pbs``/``sge``/``lsf`` profile, with
    adaptive scaling between ``min_jobs`` and ``max_jobs`` (``scale=False``: none, e.g. to
    look at ``job_script()``). TLS unless ``jobqueue.tls`` is false (then with a warning);
    the scheduler listens on ``jobqueue.interface`` when set."""
    import dask_jobqueue

    jq = cfg.jobqueue
    cls = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[cfg.profile])
    threads = max(1, jq.cores // jq.processes)  # per worker process
    kwargs: dict[str, Any] = {
        "cores": jq.cores,
        "memory": jq.memory,
        "processes": jq.processes,
        "walltime": jq.walltime,
        "job_script_prologue": [
            *(f"export {k}={v}" for k, v in malloc_environ(threads).items()),
            *jq.job_script_prologue,
        ],
        "job_extra_directives": list(jq.job_extra_directives),
        "scheduler_options": {"dashboard_address": cfg.dashboard_address},
    }
    for key in ("queue", "local_directory", "log_directory", "interface"):
        value = getattr(jq, key)
        if value is not None:
            kwargs[key] = value
    if jq.account is not None:
        kwargs["account" if cfg.profile in ("slurm", "pbs") else "project"] = jq.account
    security = jobqueue_security(jq)
    if security is not None:
        shared = Path(os.path.expanduser(os.path.expandvars(jq.shared_temp_directory)))
        shared.mkdir(parents=True, exist_ok=True, mode=0o700)
        kwargs["security"] = security
        kwargs["shared_temp_directory"] = str(shared)
    else:
        print(TLS_OFF_WARNING, file=sys.stderr, flush=True)
    cluster = cls(**kwargs)
    if scale:
        cluster.adapt(minimum_jobs=jq.min_jobs, maximum_jobs=jq.max_jobs)
    return cluster


def dashboard_link(client: Client, cfg: ClusterConfig) -> str:
    """The dashboard's address as reachable: the host it was bound to (127.0.0.1 by
    default; on HPC open it through an SSH tunnel), not the interface the jobs use."""
    host = cfg.dashboard_address.rsplit(":", 1)[0]
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if cfg.profile == "address" or port is None or host in ("", "0.0.0.0"):
        return client.dashboard_link
    return f"http://{host}:{port}/status"


@contextmanager
def start_client(cfg: ClusterConfig, *, quiet: bool = False) -> Iterator[Client]:
    """Yield a Client on the profile's cluster; close what was started on exit."""
    cluster: Any = None
    if cfg.profile == "address":
        client = Client(cfg.address)
    elif cfg.profile == "local":
        size = local_cluster_size(cfg)
        environ = worker_environ(size["threads_per_worker"])
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(
                host="127.0.0.1", dashboard_address=cfg.dashboard_address, processes=True, **size
            )
        client = Client(cluster)
    else:
        cluster = jobqueue_cluster(cfg)
        client = Client(cluster)
        if cfg.jobqueue.min_jobs:
            try:
                wait_for_worker_jobs(client, cluster, cfg)
            except BaseException:
                client.close()
                cluster.close()
                raise
    if not quiet:
        print(
            f"Dask cluster ({cfg.profile}): dashboard at {dashboard_link(client, cfg)}",
            file=sys.stderr,
        )
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _command_output(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({' '.join(args)} failed: {exc})"
    return (proc.stdout.strip() or proc.stderr.strip()) or "(no output)"


def pending_report(cluster: Any, cfg: ClusterConfig) -> str:
    """Why the worker jobs are not running: the request, the batch system's reason for
    each job and (SLURM) the partition's limits."""
    jq = cfg.jobqueue
    jobs = [str(j) for j in (getattr(w, "job_id", None) for w in cluster.workers.values()) if j]
    request = (
        f"each job asks for {jq.cores} cores, {jq.memory} and {jq.walltime} on queue "
        f"{jq.queue or '(default)'}"
    )
    if not jobs:
        return (
            f"no worker job was submitted ({request}); the submission failed: see the "
            "messages above from dask-jobqueue"
        )
    if cfg.profile == "slurm":
        reasons = _command_output(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T %R"])
        partition = ["-p", jq.queue] if jq.queue else []
        limits = _command_output(
            ["sinfo", "-h", *partition, "-o", "%P CPUs/node=%c memory/node=%mMB time=%l nodes=%D"]
        )
        return (
            f"worker job(s) {', '.join(jobs)}: squeue says (job, state, reason): {reasons}; "
            f"{request}; the partition offers: {limits}"
        )
    status = {"pbs": "qstat -f", "sge": "qstat -j", "lsf": "bjobs -l"}[cfg.profile]
    return f"worker job(s) {', '.join(jobs)} are not running ({request}); `{status} <job>` says why"


def wait_for_worker_jobs(client: Client, cluster: Any, cfg: ClusterConfig) -> None:
    """Wait until a worker has connected. Jobs still pending after
    ``pending_report_after`` seconds are reported; after ``pending_timeout`` seconds
    the command fails with the batch system's reason."""
    jq = cfg.jobqueue
    start = time.monotonic()
    reported = False
    while not client.scheduler_info(n_workers=-1)["workers"]:
        waited = time.monotonic() - start
        if waited >= jq.pending_timeout:
            msg = (
                f"no Dask worker started within {jq.pending_timeout:g} s "
                f"(cluster.jobqueue.pending_timeout): {pending_report(cluster, cfg)}. Ask "
                "for what the partition offers (cluster.jobqueue.cores, memory, walltime, "
                "queue), or wait longer"
            )
            raise ClusterError(msg)
        if not reported and waited >= jq.pending_report_after:
            print(
                f"waiting for the worker jobs ({waited:.0f} s): {pending_report(cluster, cfg)}",
                file=sys.stderr,
                flush=True,
            )
            reported = True
        time.sleep(1.0)
