"""How the engine's two thread pools share the cores: the one place that decides it.

Two libraries start worker threads in the engine: Numba's ``prange`` kernels
(through its OpenMP threading layer, one thread per core) and numpy's bundled
OpenBLAS (one per core for every GEMM). Left at their defaults they starve
each other: both pools busy-wait after finishing their work (OpenBLAS for about
0.1 s, OpenMP for a few hundred thousand spins), so on a 2-core machine a
Numba kernel that follows a GEMM finds both cores taken by spinning OpenBLAS
threads, and the other way round; and any core taken by another process
stalls whichever pool splits its work statically across both cores. (The
measurements, with these settings and without: benchmarks/README.md, "Other
choices" and "Tried and rejected".)

:func:`configure` (called by :mod:`cnncli.engine.jit`, that is, when the engine is
imported) therefore

* runs OpenBLAS on one thread, through its C API (``openblas_set_num_threads``
  under whichever name numpy's build exports) and, for any OpenBLAS loaded
  later (SciPy's, which Numba loads where SciPy is installed), through
  ``OPENBLAS_NUM_THREADS``: the engine's parallelism comes
  from its own threads instead, which sleep when idle: a fast network splits
  a batch into one part per core (:mod:`cnncli.engine.parts`), and a big GEMM
  is cut into *slabs* taken in turn by the caller and the worker threads of
  :func:`pool` (:func:`matmul`, for every GEMM of the engine);
* makes OpenMP threads sleep, not spin, while they wait for work
  (``OMP_WAIT_POLICY=PASSIVE``), so that a GEMM running in the main thread
  has its core. libgomp reads the variable once, when Numba loads it for the
  first parallel kernel; so this must run before any kernel does, and a value
  the user set is kept.

The alternatives (spinning OpenMP threads beside one-thread OpenBLAS, Numba's
``workqueue`` layer instead of OpenMP, OpenBLAS on two threads with passive
OpenMP) are slower on a 2-core machine. Everything is process-wide and
idempotent; :func:`status` says what was done.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from cnncli.engine import rules

__all__ = ["configure", "matmul", "numba_threads", "pool", "set_blas_threads", "status"]

# The names numpy's OpenBLAS builds export the setter under, newest first:
# numpy 2.x wheels bundle scipy-openblas (64-bit ints, prefixed symbols);
# older wheels and distribution builds use the plain name.
_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GETTERS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)

#: OpenBLAS threads the engine uses.
BLAS_THREADS = 1

_state: dict[str, object] = {"configured": False, "blas": None, "omp_wait_policy": None, "policy_ours": False}


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (numpy's among them)."""
    import numpy  # noqa: F401  (loads numpy's BLAS, so that it is mapped)

    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "openblas" in path.lower() and path.startswith("/") and path not in paths:
                    paths.append(path)
    except OSError:  # not Linux: look beside numpy instead
        import glob

        import numpy as np

        base = os.path.dirname(os.path.dirname(np.__file__))
        for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*", "scipy_openblas*/lib/*openblas*"):
            paths.extend(glob.glob(os.path.join(base, pattern)))
    return paths


def _blas_functions():
    """(set, get) of the loaded OpenBLAS, or None when numpy uses another BLAS."""
    for path in loaded_openblas():
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        if setter is not None:
            setter.argtypes = [ctypes.c_int]
            setter.restype = None
            if getter is not None:
                getter.argtypes = []
                getter.restype = ctypes.c_int
            return setter, getter
    return None


def set_blas_threads(n: int) -> int | None:
    """Run numpy's OpenBLAS on ``n`` threads; returns the count now in force (None: no OpenBLAS)."""
    funcs = _state.get("funcs")
    if funcs is None:
        funcs = _state["funcs"] = _blas_functions() or ()
    if not funcs:
        return None
    setter, getter = funcs
    setter(int(n))
    now = getter() if getter is not None else int(n)
    _state["blas"] = now
    return now


def configure() -> None:
    """Apply the engine's thread settings (once per process; see the module docstring)."""
    if _state["configured"]:
        return
    _state["configured"] = True
    # Must precede the first parallel kernel: libgomp reads it when it is loaded.
    if "numba.np.ufunc.omppool" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _state["policy_ours"] = True
    _state["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    # An OpenBLAS loaded later reads this when it starts: where SciPy is
    # installed, Numba loads SciPy's own OpenBLAS while it compiles (or loads)
    # its first kernel, and that one must not start a thread per core either.
    os.environ["OPENBLAS_NUM_THREADS"] = str(BLAS_THREADS)
    set_blas_threads(BLAS_THREADS)


_pool = None
_pool_size = 0


def _one_numba_thread() -> None:
    import numba

    numba.set_num_threads(1)


@contextmanager
def numba_threads(n: int) -> Iterator[None]:
    """Run the block's Numba kernels on ``n`` threads (this thread's setting), then go back to the setting before."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def pool(at_least: int = 1):
    """The engine's worker threads, one per engine thread (or ``at_least``), started on first use.

    Each runs its Numba kernels on itself alone (one Numba thread): the work
    handed to it is already one core's share. Parts of a batch that wait for
    each other (batch norm's exchange) need a thread each at the same time:
    they ask for ``at_least`` that many, and a pool too small is replaced.
    """
    global _pool, _pool_size
    import numba

    size = max(1, numba.config.NUMBA_NUM_THREADS, at_least)
    if _pool is None or _pool_size < size:
        from concurrent.futures import ThreadPoolExecutor

        if _pool is not None:
            _pool.shutdown(wait=False)  # its threads end once their work is done
        _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="cnncli", initializer=_one_numba_thread)
        _pool_size = size
    return _pool


def matmul(a, b, out=None):
    """``np.matmul(a, b, out=out)`` for 2-D or stacked ``(..., m, k) @ (..., k, n)``, split when big.

    OpenBLAS itself stays on one thread (see above): its pool would spin after
    every GEMM and collapse whenever another process holds a core.
    Instead a GEMM of at least two slabs' worth of work
    (:func:`cnncli.engine.rules.slab_count`) is cut into up to two slabs per
    core along the output's longer axis (VGG-16's 14x14 layers have 512 filter
    rows but ~200 columns per sample), which the caller and the worker threads
    take in turn, so that a core held by another process delays one slab, not
    half the product; the workers sleep when done. Every output element is one
    BLAS call's dot product either way, so the result does not depend on which
    thread ran what. Calls from a thread whose Numba thread count is 1 (a part
    of a batch that a fast network split across the cores) are not split again.
    """
    import threading

    import numpy as np

    if out is None:
        stack = () if a.ndim == b.ndim == 2 else np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        out = np.empty((*stack, a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    macs = out.size * a.shape[-1]
    rows = out.shape[-2] > out.shape[-1]
    size = out.shape[-2] if rows else out.shape[-1]
    if not rules.worth_slabs(macs, size):
        return np.matmul(a, b, out=out)
    import numba

    cores = numba.get_num_threads()  # 1 inside a part of a split batch
    count = rules.slab_count(macs, size, cores)
    if count < 2:
        return np.matmul(a, b, out=out)
    bounds = [size * i // count for i in range(count + 1)]
    slabs = iter([slice(lo, hi) for lo, hi in itertools.pairwise(bounds)])
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                s = next(slabs, None)
            if s is None:
                return
            if rows:
                np.matmul(a[..., s, :], b, out=out[..., s, :])
            else:
                np.matmul(a, b[..., s], out=out[..., s])

    helpers = [pool().submit(work) for _ in range(cores - 1)]
    work()
    # A helper that has not started has nothing left to take: cancel it
    # rather than wait for a busy worker to reach it.
    for h in helpers:
        if not h.cancel():
            h.result()
    return out


@contextmanager
def foreign_openmp() -> Iterator[None]:
    """While a library with an OpenMP runtime of its own loads (PyTorch's, which reads the variables then),
    the environment without the engine's ``OMP_WAIT_POLICY`` (one the user set stays): passive waiting suits
    the engine's threads beside one-thread BLAS, but PyTorch's meet at every operator, and sleeping between
    them slows the torch engine down (benchmarks/README.md, "Other choices")."""
    ours = _state["policy_ours"] and os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
    if ours:
        del os.environ["OMP_WAIT_POLICY"]
    try:
        yield
    finally:
        if ours:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def status() -> dict[str, object]:
    """What :func:`configure` did: OpenBLAS threads (None if not OpenBLAS) and the OpenMP wait policy."""
    return {"blas_threads": _state["blas"], "omp_wait_policy": _state["omp_wait_policy"]}
