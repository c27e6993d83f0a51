"""The one place where Numba's JIT flags are set.

Kernels import :func:`kernel` (serial) or :func:`parallel_kernel` (``prange``
over the batch or channels) from here, so that caching and fast-math are
decided once for the whole engine. ``cache=True`` keeps compiled machine code
on disk, so a second run starts without compiling.
"""

from __future__ import annotations

from numba import njit

from cnncli.engine import memory, threads

# Before any kernel runs: OpenBLAS on one thread, OpenMP threads that sleep
# rather than spin (see cnncli.engine.threads for why);
# freed memory kept for the next batch (cnncli.engine.memory).
threads.configure()
memory.configure()

# fastmath lets LLVM reorder float sums and vectorise inner loops; the engine
# never relies on NaN/Inf semantics inside a kernel (losses check finiteness
# outside them).
FLAGS = {"cache": True, "nogil": True, "fastmath": True}


# numpy's error model: a float division by zero gives inf/nan, as in numpy,
# instead of raising. Numba's default (Python's) model tests every divisor,
# and that branch, like the NaN handling of its min/max, keeps LLVM from
# vectorising a loop (benchmarks/README.md, "Other choices"). For kernels
# whose divisors are never zero: the fused blocks
# (cnncli.engine.fast) and the tiled average pooling.
VECTOR_FLAGS = {**FLAGS, "error_model": "numpy"}


# Without fastmath: every float operation rounded as written, no fused
# multiply-adds. For kernels whose results must not depend on where the arrays
# sit in memory: with fastmath, LLVM may contract a*b+c into an FMA in the
# vectorised body of a loop but not in the scalar iterations it peels off to
# align the arrays, so an element's rounding would depend on the address.
# (The optimizer's update: a resumed run, whose arrays were reloaded, must
# repeat the uninterrupted run bit for bit. Batch norm's kernels and the
# convolution's bias gradient: a part of a split batch runs them on arrays that
# start elsewhere than the whole batch's, or than the same part's on another
# thread or in a worker process, and must get the same bits.)
EXACT_FLAGS = {"cache": True, "nogil": True, "error_model": "numpy"}


# Reassociation only: LLVM may vectorise a sum, splitting it into as many
# running sums as its vector lanes and adding them up at the end, so the order
# of the additions is fixed by the compiled code and the length of the loop,
# never by where the data sits (the vectoriser uses unaligned loads, it does
# not peel iterations to align them; a test sums the same rows at every
# offset). Multiply-adds stay unfused ("contract" is not set), so an element's
# rounding is the same in every iteration. For batch norm's row sums, which a
# part of a split batch must compute to the same bits as the whole batch,
# vectorised rather than one sum at a time.
REDUCE_FLAGS = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"reassoc"}}


def kernel(fn):
    """Compile ``fn`` as a serial kernel."""
    return njit(**FLAGS)(fn)


def exact_kernel(fn):
    """A serial kernel without fastmath (see EXACT_FLAGS)."""
    return njit(**EXACT_FLAGS)(fn)


def exact_parallel_kernel(fn):
    """A ``prange`` kernel without fastmath (see EXACT_FLAGS)."""
    return njit(parallel=True, **EXACT_FLAGS)(fn)


def parallel_kernel(fn):
    """Compile ``fn`` as a kernel whose ``prange`` loops run on all cores."""
    return njit(parallel=True, **FLAGS)(fn)


def vector_kernel(fn):
    """A serial kernel with numpy's float error model (see VECTOR_FLAGS)."""
    return njit(**VECTOR_FLAGS)(fn)


def vector_parallel_kernel(fn):
    """A ``prange`` kernel with numpy's float error model (see VECTOR_FLAGS)."""
    return njit(parallel=True, **VECTOR_FLAGS)(fn)


def reduce_parallel_kernel(fn):
    """A ``prange`` kernel whose sums vectorise in an order independent of addresses (see REDUCE_FLAGS)."""
    return njit(parallel=True, **REDUCE_FLAGS)(fn)
