"""Heap trimming between stages, in the driver and on the workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from distributed import Client

from pipeline.runtime import release_memory


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _freed_mib_handed_back() -> tuple[float, float, bool]:
    """(MiB still resident after freeing ~100 MiB of malloc'd blocks, MiB handed back by
    `release_memory`, its return value). A block allocated last keeps the top of the heap
    in use, so free() alone cannot shrink it: what a stage leaves behind."""
    blocks = [bytes(1024) for _ in range(100_000)]  # > 512 bytes: glibc malloc, not pymalloc
    pin = bytes(1024)
    start = _resident_mib()
    del blocks
    freed = _resident_mib()
    returned = release_memory()
    trimmed = _resident_mib()
    del pin
    return start - freed, freed - trimmed, returned


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_memory_in_the_driver_and_on_every_worker(client: Client) -> None:
    kept, handed_back, returned = _freed_mib_handed_back()
    assert returned is True
    assert kept < 20 and handed_back > 80, (kept, handed_back)  # ~100 MiB of blocks
    # as `run` calls it between stages: a plain function through Client.run
    for kept, handed_back, returned in client.run(_freed_mib_handed_back).values():
        assert returned is True and handed_back > 80, (kept, handed_back)


def _cycle_freed_mib() -> float:
    """MiB handed back by `release_memory` of ~100 MiB that only a reference cycle holds
    (as data frames and arrays in cycles stay after a stage until a full collection)."""
    import gc

    enabled = gc.isenabled()
    gc.disable()  # no automatic collection may free the cycle before the call
    try:
        cycle: list = [bytes(1024) for _ in range(100_000)]
        cycle.append(cycle)
        pin = bytes(1024)
        del cycle
        held = _resident_mib()
        release_memory()
        freed = held - _resident_mib()
        del pin
        return freed
    finally:
        if enabled:
            gc.enable()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_memory_frees_what_reference_cycles_hold(client: Client) -> None:
    assert _cycle_freed_mib() > 80
    for freed in client.run(_cycle_freed_mib).values():
        assert freed > 80, freed


def heap_arenas_after_threads(n_threads: int = 8) -> int:
    """glibc heap arenas in this process after ``n_threads`` threads, alive at once, each
    allocated (a thread's first malloc takes a new arena while the limit allows), counted
    from ``malloc_info``'s report."""
    import ctypes
    import re
    import tempfile
    import threading

    from pipeline.runtime import _libc

    def allocate() -> None:
        kept.append([bytes(4096) for _ in range(100)])  # > 512 bytes: malloc, not pymalloc
        alive.wait()  # all threads at once: an exited thread's arena would be reused

    kept: list[list[bytes]] = []
    alive = threading.Barrier(n_threads)
    threads = [threading.Thread(target=allocate) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = _libc()
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile(suffix=".xml") as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(fp))
        libc.fclose(ctypes.c_void_p(fp))
        report = Path(f.name).read_text()
    return len(re.findall(r'<heap nr="\d+">', report))


_ARENA_PROBE = """
import sys
from pipeline.runtime import limit_heap_arenas
from tests.test_runtime import heap_arenas_after_threads
limited = limit_heap_arenas() if sys.argv[1] == "limit" else None
print(limited, heap_arenas_after_threads())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_heap_arenas_are_limited_in_the_driver_and_on_the_workers(client: Client) -> None:
    """Threads (zarr's decoding, BLAS, faiss) get arenas of their own unless limited; the
    command line limits the driver to 2 and `start_client` its workers to a task thread's
    and the main one's (graph and annotate peaked 0.24 GiB higher at 1M cells without)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))

    def probe(mode: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", _ARENA_PROBE, mode], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.split()

    assert probe("limit") == ["True", "2"]
    limited, arenas = probe("none")
    assert limited == "None" and int(arenas) > 2  # glibc's default: one per new thread
    # the workers (one task thread each) from their environment, set before they start
    assert set(client.run(heap_arenas_after_threads).values()) == {2}


def test_one_blas_thread_limits_blas_inside_the_call_only() -> None:
    import inspect

    import numpy as np  # noqa: F401  (loads OpenBLAS)
    from threadpoolctl import threadpool_info

    from pipeline.runtime import one_blas_thread

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    @one_blas_thread
    def inside(x: int, *, y: int = 2) -> list[int]:
        return blas_threads()

    before = blas_threads()
    assert before and inside(1) == [1] * len(before)
    assert blas_threads() == before
    assert str(inspect.signature(inside)) == "(x: 'int', *, y: 'int' = 2) -> 'list[int]'"


_CACHE_PROBE = """
import json, time
start = time.perf_counter()
from pipeline.graph import knn_graphs, nearest_neighbors
import numpy as np
knn_graphs(nearest_neighbors(np.random.default_rng(0).normal(size=(300, 5)), 10))
seconds = time.perf_counter() - start
import pynndescent.distances as d, umap.umap_ as u, umap.layouts as lay
from numba.core.caching import FunctionCache
out = {"seconds": seconds}
for name, f in [("pynndescent", d.squared_euclidean), ("umap", u.smooth_knn_dist),
                ("layout", lay._nb_optimize_layout_euclidean_single_epoch)]:
    out[name] = {"cached": isinstance(f._cache, FunctionCache),
                 "hits": sum(f.stats.cache_hits.values()),
                 "misses": sum(f.stats.cache_misses.values())}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_umap_and_pynndescent_are_compiled_once_per_machine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pynndescent compiles its distances at import and umap-learn its functions at first
    call, in every process (~10 s on this machine): through `umap_module` (every import
    of umap in the pipeline) numba's on-disk cache is on for both, so a second process
    loads what the first compiled."""
    import json
    import subprocess

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = runs
    for name in ("pynndescent", "umap", "layout"):
        assert first[name]["cached"] and second[name]["cached"], (name, runs)
    # compiled (and saved) by the first process, loaded by the second
    assert first["pynndescent"]["misses"] > 0 and first["umap"]["misses"] > 0, first
    assert second["pynndescent"]["hits"] > 0 and second["pynndescent"]["misses"] == 0, second
    assert second["umap"]["hits"] > 0 and second["umap"]["misses"] == 0, second
    assert list((tmp_path / "numba").rglob("*squared_euclidean*.nbi")), "no pynndescent cache"


def test_collections_between_stages_skip_what_existed_before_the_run(client: Client) -> None:
    """`run_stages` runs inside `collections_skip_older_objects`: a full collection
    traverses only what the run created (in the driver and on every worker), and the
    older objects are handed back to the collector after it."""
    import gc

    from pipeline.runtime import collections_skip_older_objects

    assert gc.get_freeze_count() == 0
    with collections_skip_older_objects(client):
        assert gc.get_freeze_count() > 100_000  # the imported libraries, at least
        assert all(n > 0 for n in client.run(gc.get_freeze_count).values())
        cycle: list = []
        cycle.append(cycle)  # created in the block: still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
    assert set(client.run(gc.get_freeze_count).values()) == {0}
