"""immunoprofile: distributed single-cell immune profiling on Dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("immunoprofile")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .config import RunConfig, SimulationConfig, load_config, parse_config

__all__ = ["RunConfig", "SimulationConfig", "__version__", "load_config", "parse_config"]
