"""The one place where Numba's JIT flags are set.

Kernels import :func:`kernel` (serial) or :func:`parallel_kernel` (``prange``
over the batch or channels) from here, so that caching and fast-math are
decided once for the whole engine. ``cache=True`` keeps compiled machine code
on disk, so a second run starts without compiling.
"""

from __future__ import annotations

from numba import njit

from cnncli import threads

# Before any kernel runs: OpenBLAS on one thread, OpenMP threads that sleep
# rather than spin (see cnncli.threads for why and what was measured).
threads.configure()

# fastmath lets LLVM reorder float sums and vectorise inner loops; the engine
# never relies on NaN/Inf semantics inside a kernel (losses check finiteness
# outside them).
FLAGS = {"cache": True, "nogil": True, "fastmath": True}


def kernel(fn):
    """Compile ``fn`` as a serial kernel."""
    return njit(**FLAGS)(fn)


def parallel_kernel(fn):
    """Compile ``fn`` as a kernel whose ``prange`` loops run on all cores."""
    return njit(parallel=True, **FLAGS)(fn)
