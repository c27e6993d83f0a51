"""What every kernel wrapper needs: argument checks, output sizes and per-thread scratch buffers.

A public wrapper (:mod:`cnncli.engine.conv`, :mod:`cnncli.engine.pool`) checks
its arguments here and hands the private ``@njit`` kernels C-contiguous arrays
and plain integers. A failed check is a bug in the calling layer (the model was
validated long before), hence :class:`ValueError`, not a user-facing error.
Output sizes come from :func:`cnncli.model.kinds.window_output`, the rule
``summarize`` and the shape inference use, so the engine can never disagree
with them.
"""

from __future__ import annotations

import operator
import threading

import numpy as np

from cnncli.model.kinds import pool_padding_problem, window_output

Pair = tuple[int, int]


def pair(name: str, value, minimum: int) -> Pair:
    """``value`` as two ints (h, w), each at least ``minimum``."""
    try:
        a, b = value
        result = (operator.index(a), operator.index(b))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of ints (h, w), got {value!r}") from None
    if result[0] < minimum or result[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


def array(name: str, a, ndim: int, dtype=None) -> np.ndarray:
    """``a`` as a C-contiguous, non-empty float32/float64 array of ``ndim`` dimensions (or of ``dtype``)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if dtype is None:
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if 0 in a.shape:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    # Kernels are compiled for C-contiguous arrays; a view from the layer above
    # costs one copy here rather than a slow strided specialisation.
    return np.ascontiguousarray(a)


def shape4(name: str, shape) -> tuple[int, int, int, int]:
    """``shape`` as four positive ints (N, C, H, W)."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of 4 ints, got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"{name} must be 4 positive ints (N, C, H, W), got {shape!r}")
    return dims  # type: ignore[return-value]


def check_pool_padding(kernel_hw: Pair, padding: Pair) -> None:
    """PyTorch's rule (in :mod:`cnncli.model.kinds`): every window still sees a real input cell."""
    problem = pool_padding_problem(kernel_hw, padding)
    if problem:
        raise ValueError(problem)


def out_hw(name: str, hw: Pair, k: Pair, s: Pair, p: Pair, d: Pair = (1, 1), ceil_mode: bool = False) -> Pair:
    """Output height and width of a sliding window (convolution or pooling); at least 1 each."""
    oh = window_output(hw[0], k[0], s[0], p[0], d[0], bool(ceil_mode))
    ow = window_output(hw[1], k[1], s[1], p[1], d[1], bool(ceil_mode))
    if oh < 1 or ow < 1:
        raise ValueError(f"{name}: window {k} does not fit input {hw} with padding {p}")
    return oh, ow


_workspace = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A reusable uninitialised buffer, one per thread, slot and dtype.

    Column matrices run to tens of megabytes; allocating them afresh on every
    call costs page faults comparable to filling them. Slots are shared by
    every module on a thread: callers outside :mod:`cnncli.engine.conv` prefix
    theirs (``blocked.xp``) so that buffers in use never alias. One workspace
    per thread, so that replicas running parts of a batch on different threads
    never share a buffer.
    """
    key = (slot, np.dtype(dtype).str)
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        buffers = _workspace.buffers = {}
    size = 1
    for d in shape:
        size *= d
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = _aligned(size, np.dtype(dtype))
    return buf[:size].reshape(shape)


#: Every scratch buffer starts on this boundary (bytes): a cache line, and an AVX-512 vector.
ALIGN = 64


def _aligned(size: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``size`` elements whose data starts on an ALIGN-byte boundary.

    A fastmath kernel's vectorised loop may start with a few scalar iterations
    until its data is aligned, and add those in another order (or without a
    fused multiply-add): where an array starts changes the last bit of a sum.
    Buffers that start on the same boundary in every thread and process give
    the same bits wherever a part of a batch runs.
    """
    raw = np.empty(size * dtype.itemsize + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + size * dtype.itemsize].view(dtype)
