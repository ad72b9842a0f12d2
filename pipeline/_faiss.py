"""faiss with one OpenMP thread per core this process may use.

Dask's LocalCluster sets ``OMP_NUM_THREADS=1`` in the driver's environment (for the
workers it starts); faiss, imported later in the driver, then searched on one thread
(the kNN of 855k cells took 86 s instead of 43 s). The driver's searches run while the
workers are idle, so they get every core.
"""

from __future__ import annotations

import os
from types import ModuleType


def faiss_all_cores() -> ModuleType:
    """The faiss module, set to one thread per core this process may run on."""
    import faiss

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    faiss.omp_set_num_threads(cores or 1)
    return faiss
