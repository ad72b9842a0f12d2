"""Between the stages of a run: workers still heavy after the heap trim are restarted
(`cluster.restart_worker_above`), and the results do not change."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import dask
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from cluster.config import ClusterConfig
from cluster.launch import worker_environ
from pipeline.cli import main
from pipeline.commands.run import release_between_stages
from pipeline.runtime import trimmed_rss
from pipeline.simulate import SimulationResult

_HELD: list[bytes] = []


def _hold(mib: int) -> int:
    """Keep ``mib`` MiB alive in this worker process (as a stage's leftovers would be)."""
    _HELD.extend(bytes(2**20) for _ in range(mib))
    return len(_HELD)


@pytest.fixture
def own_cluster() -> Iterator[Client]:
    """A cluster of its own: these tests restart its workers."""
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address="127.0.0.1:0", memory_limit="2GiB") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


def test_only_the_workers_above_the_limit_are_restarted(own_cluster: Client) -> None:
    client = own_cluster
    before = client.run(trimmed_rss)
    heavy, light = sorted(before)
    client.run(_hold, 300, workers=[heavy])
    limit = max(before.values()) + 150 * 2**20
    log = logging.getLogger("test_restart")

    assert release_between_stages(client, None, log) == []  # never
    assert release_between_stages(client, 2**40, log) == []  # nobody above
    assert sorted(client.scheduler_info()["workers"]) == [heavy, light]

    assert release_between_stages(client, limit, log) == [heavy]
    client.wait_for_workers(2)
    now = client.run(trimmed_rss)
    assert light in now and heavy not in now  # a new process in the heavy one's place
    assert all(rss <= limit for rss in now.values())
    assert client.submit(sum, [1, 2, 3]).result() == 6  # the cluster still computes


def test_the_limit_is_a_memory_size_and_never_applies_to_someone_elses_cluster() -> None:
    assert ClusterConfig().worker_restart_bytes() == 2**30
    assert ClusterConfig(restart_worker_above="800MB").worker_restart_bytes() == 800 * 10**6
    assert ClusterConfig(restart_worker_above=None).worker_restart_bytes() is None
    address = ClusterConfig(profile="address", address="tcp://10.0.0.5:8786")
    assert address.worker_restart_bytes() is None
    for size, expected in [("1 GiB", 2**30), ("2.5GB", 2_500_000_000), ("512kiB", 2**19),
                           ("100", 100)]:  # fmt: skip
        assert ClusterConfig(restart_worker_above=size).worker_restart_bytes() == expected
    for bad in ("lots", "1e9", "GiB", "-1GB", "1XB"):
        with pytest.raises(ValueError, match=f"'{bad}' is not a memory size"):
            ClusterConfig(restart_worker_above=bad)


def test_a_run_restarting_every_worker_between_stages_gives_the_same_results(
    tmp_path: Path, small_cohort: SimulationResult
) -> None:
    def run(limit: str) -> Path:
        cfg = tmp_path / f"{limit}.yaml"
        cfg.write_text(f"cluster: {{n_workers: 2, threads_per_worker: 1, "
                       f"restart_worker_above: {limit}}}\n")  # fmt: skip
        workdir = tmp_path / f"w_{limit}"
        args = ["run", str(cfg), "--samplesheet", str(small_cohort.samplesheet),
                "--workdir", str(workdir), "--until", "qc"]  # fmt: skip
        assert main(args) == 0
        return workdir

    restarted, kept = run("1B"), run("null")
    log = (restarted / "logs" / "run.log").read_text().splitlines()
    restarts = [line for line in log if "restarted 2 worker(s) above 0.00 GiB" in line]
    assert len(restarts) == 2, log[-10:]  # after ingest and after qc
    assert "restarted" not in (kept / "logs" / "run.log").read_text()
    new = ad.read_zarr(restarted / "cohort.zarr")
    old = ad.read_zarr(kept / "cohort.zarr")
    pd.testing.assert_frame_equal(new.obs, old.obs)
