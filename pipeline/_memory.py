"""Hand freed heap memory back to the operating system (glibc's ``malloc_trim``).

A stage frees its large arrays when it ends, but glibc keeps much of that memory mapped in
the process, so the next stage would start from the last one's peak. Called in the driver
and, through ``Client.run``, on every worker between stages. A no-op where there is no
glibc (macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_memory() -> bool:
    """Collect garbage and trim the heap; True if memory was returned."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
