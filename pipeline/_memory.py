"""Hand freed heap memory back to the operating system (glibc's ``malloc_trim``).

A stage frees its large arrays when it ends, but glibc keeps much of that memory mapped in
the process, so the next stage would start from the last one's peak. Called in the driver
and, through ``Client.run``, on every worker between stages. No garbage
collection first: arrays are freed by reference counting, and a full collection of the
driver's heap costs ~0.13 s per call. A no-op where there is no glibc (macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_memory() -> bool:
    """Trim the heap; True if memory was returned."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False
