"""immunoprofile: distributed single-cell immune profiling on Dask.

The names most used from notebooks are importable from here: the configuration
(`load_config`), the workdir's paths (`Workdir`), and `read_workdir`, the one entry point
(every cell's results with the lazy counts, as scanpy's tools accept them); its halves
are `open_results` (results only) and `open_cohort` (counts only). The stages are declared in `pipeline.registry`.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("immunoprofile")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .config import RunConfig, SimulationConfig, load_config, parse_config

if TYPE_CHECKING:
    from .cohort import open_cohort
    from .explore import read_workdir
    from .results import open_results
    from .workdir import Workdir

_LAZY = {
    "open_cohort": "cohort",
    "open_results": "results",
    "read_workdir": "explore",
    "Workdir": "workdir",
}


def __getattr__(name: str) -> Any:
    """The notebook names, imported on first use (anndata and zarr are slow to import)."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "RunConfig",
    "SimulationConfig",
    "Workdir",
    "__version__",
    "load_config",
    "open_cohort",
    "open_results",
    "parse_config",
    "read_workdir",
]
