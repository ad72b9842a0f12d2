"""pyplot for the package's figures without taking over a notebook's backend."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot; the non-interactive Agg backend unless a backend was chosen
    already (``MPLBACKEND``, as Jupyter kernels set it for inline figures, or pyplot
    imported by the caller): stages draw to files, notebooks show the same figures."""
    import matplotlib

    if not os.environ.get("MPLBACKEND") and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
