"""How the engine's arrays get their memory: freed pages are kept for the next batch.

Every pass allocates its activations afresh (numpy arrays), and frees them
when the pass is over, or sooner: an inference pass of a fast network drops
each value once its last reader has run (:meth:`cnncli.engine.network.Network.forward_part`).
glibc's allocator hands large blocks back to the operating system when they
are freed (it trims the heap and unmaps blocks above its mmap threshold), so
the next batch's arrays would be mapped in again a page fault at a time, which
costs a small network's inference much of its speed (benchmarks/README.md,
"Other choices"). :func:`configure` (called, like the thread settings,
when the engine is imported) asks glibc to keep what it frees: no trimming, and
blocks up to the largest mmap threshold glibc allows (32 MB) served from the heap.
A process then keeps its peak memory until it exits, which a command does soon.

glibc only (``mallopt``); elsewhere nothing is done. Values the user set through
``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` are kept.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["configure", "status"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is given back only beyond this much (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_state: dict[str, object] = {"configured": False, "kept": False}


def configure() -> None:
    """Apply the allocator settings (once per process; see the module docstring)."""
    if _state["configured"]:
        return
    _state["configured"] = True
    if os.name != "posix" or "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    kept = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    kept = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and kept
    _state["kept"] = kept


def status() -> dict[str, object]:
    """Whether :func:`configure` set glibc to keep freed memory."""
    return {"kept": _state["kept"]}
