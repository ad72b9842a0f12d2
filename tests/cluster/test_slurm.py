"""The ``slurm`` profile end to end: Dask workers as real jobs of a single-node SLURM.

The module fixture starts SLURM on this machine with ``.ci/slurm/setup.sh`` (installs
slurm-wlm and munge with apt-get if needed; needs root) and stops it with
``.ci/slurm/teardown.sh``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import pytest

from cluster.config import ClusterConfig, JobqueueConfig
from cluster.launch import start_client

SLURM_CI = Path(__file__).resolve().parents[2] / ".ci" / "slurm"
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

        assert client.submit(sum, range(100)).result() == 4950
        x = da.arange(1_000_000, chunks=100_000)
        assert int(client.compute(x.sum()).result()) == 499_999_500_000

    # Closing the client cancels the worker jobs.
    deadline = time.monotonic() + 60
    while _squeue("%i") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue("%i", "%j", "%T") == []
