"""The process's runtime: heap memory handed back between stages, faiss on every core,
and matplotlib without taking over a notebook's backend.

`release_memory`: a stage frees its large arrays when it ends, but glibc keeps much of
that memory mapped in the process, so the next stage would start from the last one's
peak. Between stages, in the driver and (through ``Client.run``) on every worker, a
full garbage collection first frees what reference cycles still hold (after the 4M-cell
abundance stage 0.36 GiB of the driver's 1.32: data frames and arrays in cycles, which
only the rare full collection would free), then ``malloc_trim`` hands the free pages
back; ~0.1-0.3 s per call. The trim is a no-op where there is no glibc (macOS).

`limit_heap_arenas`: glibc gives threads heap arenas of their own (up to 8 per core), and
memory freed in one arena is not reused by a thread of another: the threads faiss, BLAS and
zarr's chunk decoding run in left the driver's heap larger than its live arrays. The
command line limits the driver to two arenas, as `cluster.launch.malloc_environ` does for
the workers (the graph and annotate stages of a 1M-cell cohort peaked 0.24 GiB lower over
all processes, and no slower).

`faiss_all_cores`: Dask's LocalCluster sets ``OMP_NUM_THREADS=1`` in the driver's
environment (for the workers it starts); faiss, imported later in the driver, then
searched on one thread (the kNN of 855k cells took 86 s instead of 43 s). The driver's
searches run while the workers are idle, so they get every core.

`one_blas_thread`: the opposite for many small problems (the abundance models): numpy's
OpenBLAS, multi-threaded in the driver, made scipy's L-BFGS-B 2.5-36x slower per iteration
on a busy 2-core machine.

`umap_module`: umap-learn and pynndescent compile their numba functions in every process
that imports them (neither asks numba to cache them): pynndescent's distances, compiled
eagerly at import, ~8-10 s per process on this machine, then umap's own at first call.
Imported through `umap_module`, numba's on-disk cache is on for all of them, so only a
machine's first run compiles them (numba recompiles when the libraries' sources change;
the code is the same as compiled, only the compilation is skipped).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def one_blas_thread(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` with BLAS limited to one thread (threadpoolctl), typed as ``func``."""

    @functools.wraps(func)
    def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return limited


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_memory() -> bool:
    """Collect garbage, then trim the heap; True if memory was returned."""
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


@contextmanager
def collections_skip_older_objects(client: Any = None) -> Iterator[None]:
    """Within the block the garbage collector leaves out every object alive at its start
    (``gc.freeze``), in this process and, with a Dask ``client``, on every worker; they
    are handed back to it at the end (``gc.unfreeze``). A full collection then traverses
    only what the block created: `release_memory` between stages took ~0.3 s per 600,000
    objects (the imported libraries; more in a long-lived notebook or test process) and
    takes ~0 s; the cycles the stages leave are still collected."""
    gc.freeze()
    if client is not None:
        with contextlib.suppress(Exception):
            client.run(gc.freeze)
    try:
        yield
    finally:
        gc.unfreeze()
        if client is not None:
            with contextlib.suppress(Exception):
                client.run(gc.unfreeze)


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_heap_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` glibc heap arenas in this process from now on, unless the
    environment set ``MALLOC_ARENA_MAX`` already; True if the limit was set by this call
    (False without glibc, e.g. macOS)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    return bool(mallopt(M_ARENA_MAX, arenas)) if mallopt is not None else False


def trimmed_rss() -> int:
    """`release_memory`, then this process's resident memory in bytes: what a worker
    carries into the next stage."""
    import psutil

    release_memory()
    return int(psutil.Process().memory_info().rss)


def faiss_all_cores() -> ModuleType:
    """The faiss module, set to one thread per core this process may run on."""
    import faiss

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    faiss.omp_set_num_threads(cores or 1)
    return faiss


def pyplot() -> ModuleType:
    """matplotlib.pyplot; the non-interactive Agg backend unless a backend was chosen
    already (``MPLBACKEND``, as Jupyter kernels set it for inline figures, or pyplot
    imported by the caller): stages draw to files, notebooks show the same figures."""
    import matplotlib

    if not os.environ.get("MPLBACKEND") and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_UMAP_IMPORT = threading.Lock()
_UMAP_READY: list[bool] = []  # non-empty once `umap_module` has run in this process


def _enable_numba_caching(prefixes: tuple[str, ...]) -> int:
    """Turn numba's on-disk cache on for the jitted functions of the imported modules
    named ``prefixes`` (or below) that have none; how many."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    done = 0
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and isinstance(
                getattr(value, "_cache", None), NullCache
            ):
                try:
                    value.enable_caching()
                except RuntimeError:  # numba found nowhere to write the cache
                    continue
                done += 1
    return done


def umap_module() -> ModuleType:
    """umap-learn's ``umap.umap_``, imported (once per process) with numba's on-disk
    cache on for umap's and pynndescent's jitted functions: ``numba.njit`` defaults to
    ``cache=True`` while the two packages are imported (pynndescent compiles its
    distances right then), and functions of theirs imported earlier (e.g. by scanpy in a
    notebook) get the cache before their first call."""
    with _UMAP_IMPORT:
        if _UMAP_READY:
            return sys.modules["umap.umap_"]
        if "umap.umap_" not in sys.modules:
            import numba

            original = numba.njit

            def cached_njit(*args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("cache", True)
                return original(*args, **kwargs)

            numba.njit = cached_njit
            try:
                import umap  # noqa: F401  (imports pynndescent and umap's modules)
            finally:
                numba.njit = original
            # a few of pynndescent's functions (its NN-descent) cannot be cached: numba
            # says so when they are compiled, and compiles them as before
            from numba.core.errors import NumbaWarning

            warnings.filterwarnings(
                "ignore",
                message="Cannot cache compiled function",
                category=NumbaWarning,
                module=r".*[/\\](pynndescent|umap)[/\\]",  # numba names the file
            )
        _enable_numba_caching(("umap", "pynndescent"))
        _UMAP_READY.append(True)
    return sys.modules["umap.umap_"]
