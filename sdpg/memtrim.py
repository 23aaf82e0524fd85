"""Hand freed heap memory back to the operating system after a training step (glibc `malloc_trim`).

Design choices:
- On the CPU, torch's tensors come from glibc malloc. A step frees gigabytes of activations and logits
  tiles, but glibc keeps much of it in its arenas, so the process's resident size stays at its peak
  (or creeps up) although the memory is free. `malloc_trim(0)` returns free pages at the top of each
  arena and the unused pages inside it; it is cheap next to a training step.
- Only where glibc is the C library; elsewhere (musl, macOS, Windows) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library has no `malloc_trim`."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
