"""The graph stage's sharded neighbour search alone (`graph._sharded._neighbours`) on a
synthetic embedding: each worker's peak resident memory, and the most extra copies of a
result held at once (a key in memory on more than one worker), on a LocalCluster of two
single-threaded workers with the run's worker environment.

The embedding (``--cells`` x 50, float32, 40 Gaussian clusters of varied spread, seeded)
is written once to ``ROOT/embedding-CELLS.zarr``. Run it with ``PYTHONPATH`` set to a
worktree of each commit to compare them:

    PYTHONPATH=WORKTREE python benchmarks/graph_search_memory.py --cells 1600000 \
        --root /work/cmp/s19 --label new --json benchmarks/results/graph_search_memory.jsonl
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
from measure import append_record, pipeline_commit

GIB = 2**30


def embedding(root: Path, cells: int) -> str:
    store = root / f"embedding-{cells}.zarr"
    if store.exists():
        return str(store)
    import zarr

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (40, 50)).astype(np.float32)
    array = zarr.open_group(str(store), mode="w").create_array(
        "X", shape=(cells, 50), chunks=(20_000, 50), dtype="float32"
    )
    for a in range(0, cells, 100_000):
        b = min(cells, a + 100_000)
        spread = rng.uniform(0.5, 2, (b - a, 1)).astype(np.float32)
        noise = rng.normal(0, 1, (b - a, 50)).astype(np.float32)
        array[a:b] = centers[rng.integers(0, 40, b - a)] + noise * spread
    return str(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_600_000)
    parser.add_argument("--block-cells", type=int, default=200_000)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import dask
    import psutil
    from distributed import Client, LocalCluster

    from cluster.launch import worker_environ
    from pipeline.config import GraphConfig
    from pipeline.graph._sharded import _neighbours

    args.root.mkdir(parents=True, exist_ok=True)
    store = embedding(args.root, args.cells)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(1)}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     memory_limit="8GiB", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        workers = [psutil.Process(p) for p in client.run(os.getpid).values()]
        start = [w.memory_info().rss for w in workers]
        peaks, extra, done = list(start), [0], threading.Event()

        def sample() -> None:
            last = 0.0
            while not done.is_set():
                for i, w in enumerate(workers):
                    peaks[i] = max(peaks[i], w.memory_info().rss)
                if time.monotonic() - last > 1:
                    last = time.monotonic()
                    copies = sum(max(0, len(h) - 1) for h in client.who_has().values())
                    extra[0] = max(extra[0], copies)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t = time.perf_counter()
        nn, _ = _neighbours(client, store, "X", np.arange(args.cells), GraphConfig(),
                            args.block_cells)  # fmt: skip
        client.gather(nn)
        wall = time.perf_counter() - t
        done.set()
        sampler.join()
    record = {
        "label": args.label, "commit": pipeline_commit(), "cells": args.cells,
        "block_cells": args.block_cells, "wall_s": round(wall, 1),
        "workers_start_gib": [round(s / GIB, 3) for s in start],
        "workers_peak_gib": [round(p / GIB, 3) for p in peaks],
        "most_extra_copies": extra[0],
    }  # fmt: skip
    append_record(record, args.json)


if __name__ == "__main__":
    main()
