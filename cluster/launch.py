"""Start (or connect to) the Dask cluster a profile describes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
from distributed import Client, LocalCluster

from .config import ClusterConfig


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


JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
                     "lsf": "LSFCluster"}  # fmt: skip


def jobqueue_cluster(cfg: ClusterConfig, *, scale: bool = True) -> Any:
    """The dask-jobqueue cluster of a ``slurm``/``pbs``/``sge``/``lsf`` profile, with
    adaptive scaling between ``min_jobs`` and ``max_jobs`` (``scale=False``: none, e.g. to
    look at ``job_script()``)."""
    import dask_jobqueue

    jq = cfg.jobqueue
    cls = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[cfg.profile])
    kwargs: dict[str, Any] = {
        "cores": jq.cores,
        "memory": jq.memory,
        "processes": jq.processes,
        "walltime": jq.walltime,
        "job_script_prologue": list(jq.job_script_prologue),
        "job_extra_directives": list(jq.job_extra_directives),
        "scheduler_options": {"dashboard_address": cfg.dashboard_address},
    }
    for key in ("queue", "local_directory", "log_directory", "interface"):
        value = getattr(jq, key)
        if value is not None:
            kwargs[key] = value
    if jq.account is not None:
        kwargs["account" if cfg.profile in ("slurm", "pbs") else "project"] = jq.account
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
        cluster = LocalCluster(
            host="127.0.0.1",
            dashboard_address=cfg.dashboard_address,
            processes=True,
            **local_cluster_size(cfg),
        )
        client = Client(cluster)
    else:
        cluster = jobqueue_cluster(cfg)
        client = Client(cluster)
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
