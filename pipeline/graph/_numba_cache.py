"""numba's on-disk cache for umap-learn's jitted functions.

umap-learn compiles its numba functions (the fuzzy simplicial set's, the layout's epochs)
without ``cache=True``, so every run paid ~8.6 s compiling them (py-spy of the 50k-cell
run: 30% of the graph stage). Turning the cache on before their first call makes numba
save the machine code (beside umap's sources, or in numba's user-wide cache when those
are read-only) and load it in later runs; numba recompiles when umap's source changes.
The code is the same as compiled; only the compilation is skipped.
"""

from __future__ import annotations

import functools
import sys


@functools.cache
def cache_umap_functions() -> int:
    """Turn numba's cache on for every jitted function of umap-learn's modules (once per
    process); the number of functions."""
    import umap.umap_  # noqa: F401  (imports umap's other modules)
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    done = 0
    for name, module in list(sys.modules.items()):
        if not (name == "umap" or name.startswith("umap.")) or module is None:
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
