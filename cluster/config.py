"""Typed cluster profiles: where the Dask workers run."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?i?b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def memory_bytes(text: str) -> int:
    """A memory size ('1GiB', '800MB', '512kB'; a bare number is bytes) in bytes."""
    match = _SIZE.fullmatch(text)
    unit = (match.group(2) or "b").lower() if match else ""
    if match is None or unit not in _UNITS:
        msg = f"{text!r} is not a memory size (e.g. '1GiB', '800MB')"
        raise ValueError(msg)
    return int(float(match.group(1)) * _UNITS[unit])


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """Strings reach job scripts and command lines: a newline would start a new shell
        line in a generated script. (A config, like a job script, is trusted code; this
        keeps a pasted value from becoming code by accident.)"""
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and _CONTROL.search(item):
                found = _CONTROL.search(item)
                assert found is not None
                msg = (
                    f"{item!r} contains the control character {found.group()!r}; values "
                    "here are written into job scripts, one line each"
                )
                raise ValueError(msg)
        return value


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
    tls: bool = Field(
        True,
        description="TLS between scheduler, workers and client: without it anyone who can "
        "reach the scheduler's port can run code as you; turn off only on a trusted network",
    )
    tls_ca_file: str | None = Field(None, description="site CA certificate (PEM)")
    tls_cert: str | None = Field(None, description="site certificate (PEM) for all roles")
    tls_key: str | None = Field(None, description="its private key (PEM)")
    shared_temp_directory: str = Field(
        "~/.immunoprofile/tls",
        description="folder on a file system the compute nodes share, where the temporary "
        "certificates are written for the worker jobs (private to you)",
    )
    pending_report_after: float = Field(
        120, gt=0, description="seconds: worker jobs still pending then are reported"
    )
    pending_timeout: float = Field(
        1800, gt=0, description="seconds: no worker by then fails the command with the reason"
    )

    @model_validator(mode="after")
    def _jobs_ordered(self) -> JobqueueConfig:
        if self.min_jobs > self.max_jobs:
            msg = f"min_jobs ({self.min_jobs}) must not exceed max_jobs ({self.max_jobs})"
            raise ValueError(msg)
        site = [self.tls_ca_file, self.tls_cert, self.tls_key]
        if any(site) and not all(site):
            msg = "tls_ca_file, tls_cert and tls_key are given together (the site's TLS files)"
            raise ValueError(msg)
        if any(site) and not self.tls:
            msg = "tls_ca_file, tls_cert and tls_key are set but tls is false"
            raise ValueError(msg)
        if self.pending_report_after > self.pending_timeout:
            msg = "pending_report_after must not exceed pending_timeout"
            raise ValueError(msg)
        return self


class ClusterConfig(_Frozen):
    """Where the Dask workers run.

    ``local`` (default) starts a LocalCluster sized from this machine unless ``n_workers``,
    ``threads_per_worker`` or ``memory_limit`` say otherwise; ``address`` connects to a
    running scheduler; ``slurm``, ``pbs``, ``sge`` and ``lsf`` start workers as batch jobs
    (``jobqueue``; the scheduler then listens on ``jobqueue.interface`` or all interfaces so
    that the jobs reach it, over TLS unless ``jobqueue.tls`` is false, while the dashboard
    stays on ``dashboard_address``).
    """

    profile: Literal["local", "address", "slurm", "pbs", "sge", "lsf"] = "local"
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    memory_limit: str | None = Field(None, description="per worker, e.g. '4GiB'; default auto")
    address: str | None = Field(None, description="scheduler address for profile 'address'")
    dashboard_address: str = Field("127.0.0.1:0", description="host:port; port 0 picks one")
    restart_worker_above: str | None = Field(
        "1GiB",
        description=(
            "between the stages of `immunoprofile run`: a worker whose memory after the heap "
            "trim is above this is restarted, so that what earlier stages left in it "
            "(imported libraries, compiled code, heap fragments) does not add to later "
            "stages' peaks; null: never. The workers of profile 'address' are not the "
            "run's and are never restarted"
        ),
    )
    jobqueue: JobqueueConfig = Field(default_factory=JobqueueConfig)

    @field_validator("restart_worker_above")
    @classmethod
    def _a_size(cls, value: str | None) -> str | None:
        if value is not None:
            memory_bytes(value)
        return value

    def worker_restart_bytes(self) -> int | None:
        """`restart_worker_above` in bytes; None when workers are never restarted (also
        for profile 'address': the workers belong to someone else's cluster)."""
        if self.restart_worker_above is None or self.profile == "address":
            return None
        return memory_bytes(self.restart_worker_above)

    @model_validator(mode="after")
    def _address_given(self) -> ClusterConfig:
        if self.profile == "address" and not self.address:
            msg = "profile 'address' needs cluster.address (e.g. 'tcp://10.0.0.5:8786')"
            raise ValueError(msg)
        return self
