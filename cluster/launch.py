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


def _jobqueue_cluster(cfg: ClusterConfig) -> Any:
    import dask_jobqueue

    jq = cfg.jobqueue
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[cfg.profile]
    kwargs: dict[str, Any] = {
        "cores": jq.cores,
        "memory": jq.memory,
        "processes": jq.processes,
        "walltime": jq.walltime,
        "job_script_prologue": list(jq.job_script_prologue),
        "job_extra_directives": list(jq.job_extra_directives),
        "scheduler_options": {"dashboard_address": cfg.dashboard_address},
    }
    for key in ("queue", "account", "local_directory", "log_directory", "interface"):
        value = getattr(jq, key)
        if value is not None:
            kwargs[key] = value
    cluster = cls(**kwargs)
    cluster.adapt(minimum_jobs=jq.min_jobs, maximum_jobs=jq.max_jobs)
    return cluster


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
        cluster = _jobqueue_cluster(cfg)
        client = Client(cluster)
    if not quiet:
        print(
            f"Dask cluster ({cfg.profile}): dashboard at {client.dashboard_link}", file=sys.stderr
        )
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
