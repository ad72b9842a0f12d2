"""Typed cluster profiles: where the Dask workers run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobqueueConfig(_Frozen):
    """Workers as batch jobs through dask-jobqueue (profiles ``slurm``, ``pbs``, ``sge``,
    ``lsf``). ``account`` is the job's account (SLURM, PBS) or project (SGE, LSF)."""

    queue: str | None = None
    account: str | None = None
    walltime: str = "02:00:00"
    cores: int = Field(4, ge=1, description="cores per job")
    memory: str = Field("16GiB", description="memory per job, e.g. '16GiB'")
    processes: int = Field(1, ge=1, description="Dask worker processes per job")
    job_script_prologue: list[str] = Field(
        default_factory=list, description="shell lines run before the worker starts"
    )
    job_extra_directives: list[str] = Field(default_factory=list)
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    min_jobs: int = Field(1, ge=0)
    max_jobs: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _jobs_ordered(self) -> JobqueueConfig:
        if self.min_jobs > self.max_jobs:
            msg = f"min_jobs ({self.min_jobs}) must not exceed max_jobs ({self.max_jobs})"
            raise ValueError(msg)
        return self


class ClusterConfig(_Frozen):
    """Where the Dask workers run.

    ``local`` (default) starts a LocalCluster sized from this machine unless ``n_workers``,
    ``threads_per_worker`` or ``memory_limit`` say otherwise; ``address`` connects to a
    running scheduler; ``slurm``, ``pbs``, ``sge`` and ``lsf`` start workers as batch jobs
    (``jobqueue``; the scheduler then listens on ``jobqueue.interface`` or all interfaces so
    that the jobs reach it, while the dashboard stays on ``dashboard_address``).
    """

    profile: Literal["local", "address", "slurm", "pbs", "sge", "lsf"] = "local"
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    memory_limit: str | None = Field(None, description="per worker, e.g. '4GiB'; default auto")
    address: str | None = Field(None, description="scheduler address for profile 'address'")
    dashboard_address: str = Field("127.0.0.1:0", description="host:port; port 0 picks one")
    jobqueue: JobqueueConfig = Field(default_factory=JobqueueConfig)

    @model_validator(mode="after")
    def _address_given(self) -> ClusterConfig:
        if self.profile == "address" and not self.address:
            msg = "profile 'address' needs cluster.address (e.g. 'tcp://10.0.0.5:8786')"
            raise ValueError(msg)
        return self
