"""The dense layer's weight gradient, xᵀ·dy, from x (N, in) and dy (N, out) into (in, out).

At a batch of one or two samples this is an outer product (a sum of N): a GEMM
with K = N goes over the whole (in, out) output at a fraction of the memory's
bandwidth, where one pass over its rows, split between the threads, writes
each element once (``rules.dense_outer``). Larger batches go to
:func:`cnncli.engine.threads.matmul`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnncli.engine import rules, threads
from cnncli.engine.jit import exact_parallel_kernel

__all__ = ["weight_grad"]


@exact_parallel_kernel
def _outer(x, dy, out):
    # out[i, j] = x[0, i]·dy[0, j] + x[1, i]·dy[1, j] + …, added in sample order
    n_, i_ = x.shape
    j_ = dy.shape[1]
    for i in prange(i_):
        row = out[i]
        a = x[0, i]
        for j in range(j_):
            row[j] = a * dy[0, j]
        for n in range(1, n_):
            a = x[n, i]
            for j in range(j_):
                row[j] += a * dy[n, j]


def weight_grad(x: np.ndarray, dy: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (in, out) = xᵀ·dy for x (N, in) and dy (N, out) of one dtype, out C-contiguous; returns out."""
    if x.ndim != 2 or dy.ndim != 2 or x.shape[0] != dy.shape[0] or out.shape != (x.shape[1], dy.shape[1]):
        raise ValueError(f"x {x.shape}, dy {dy.shape} and out {out.shape} must be (N, in), (N, out), (in, out)")
    if not out.flags.c_contiguous or not x.dtype == dy.dtype == out.dtype:
        raise ValueError(f"out must be C-contiguous and x, dy, out of one dtype, got {x.dtype} {dy.dtype} {out.dtype}")
    if rules.dense_outer(x.shape[0]):
        _outer(x, dy, out)
        return out
    return threads.matmul(x.T, dy, out=out)
