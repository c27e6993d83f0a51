"""ReLU (and leaky ReLU) and its gradient as one pass each, alone or after a residual sum.

numpy's ReLU takes a pass for the mask, one for the product and one for the
gradient's product, with a boolean mask kept in between; here the forward
pass writes max(x, 0) and the backward pass reads the output itself (x > 0
exactly where y > 0), so nothing else is kept. A residual connection's sum and
the ReLU after it (ResNet's ``add`` → ``relu``) share the one pass.
Every array is viewed flat; work is split into contiguous ranges. Compiled
without fastmath (a compare and a select vectorise without it), so that NaN
goes through a ReLU as it does in numpy and PyTorch instead of turning into 0.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnncli.engine.jit import exact_parallel_kernel

__all__ = ["add_relu", "leaky_relu", "leaky_relu_grad", "log_softmax", "relu", "relu_grad", "sigmoid", "softmax"]

_SPAN = 1 << 14  # values per parallel job: enough work to be worth a thread's wake-up


@exact_parallel_kernel
def _relu(x, y):
    n = x.size
    for job in prange((n + _SPAN - 1) // _SPAN):
        for i in range(job * _SPAN, min(n, (job + 1) * _SPAN)):
            v = x[i]
            y[i] = 0 if v < 0 else v


@exact_parallel_kernel
def _add_relu(a, b, y):
    n = a.size
    for job in prange((n + _SPAN - 1) // _SPAN):
        for i in range(job * _SPAN, min(n, (job + 1) * _SPAN)):
            v = a[i] + b[i]
            y[i] = 0 if v < 0 else v


@exact_parallel_kernel
def _relu_grad(dy, y, dx):
    n = dy.size
    for job in prange((n + _SPAN - 1) // _SPAN):
        for i in range(job * _SPAN, min(n, (job + 1) * _SPAN)):
            dx[i] = dy[i] if y[i] > 0 else 0


@exact_parallel_kernel
def _leaky_relu(x, slope, y):
    n = x.size
    for job in prange((n + _SPAN - 1) // _SPAN):
        for i in range(job * _SPAN, min(n, (job + 1) * _SPAN)):
            v = x[i]
            y[i] = v if v > 0 else slope * v


@exact_parallel_kernel
def _leaky_relu_grad(dy, y, slope, dx):
    n = dy.size
    for job in prange((n + _SPAN - 1) // _SPAN):
        for i in range(job * _SPAN, min(n, (job + 1) * _SPAN)):
            dx[i] = dy[i] if y[i] > 0 else slope * dy[i]


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1)


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max(x, 0), into ``out`` (x itself, for one in place; contiguous) or a new array like x."""
    y = np.empty(x.shape, dtype=x.dtype) if out is None else out
    _relu(_flat(x), y.reshape(-1))
    return y


def add_relu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(a + b, 0) for a and b of one shape and dtype, a new array."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a {a.shape} {a.dtype} and b {b.shape} {b.dtype} must agree")
    y = np.empty(a.shape, dtype=a.dtype)
    _add_relu(_flat(a), _flat(b), y.reshape(-1))
    return y


def relu_grad(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The gradient through a ReLU whose output was ``y``: dy where y > 0, else 0."""
    if dy.shape != y.shape:
        raise ValueError(f"dy {dy.shape} and y {y.shape} must have one shape")
    dx = np.empty(dy.shape, dtype=dy.dtype)
    _relu_grad(_flat(dy), _flat(y).astype(dy.dtype, copy=False), dx.reshape(-1))
    return dx


def leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    """x where x > 0, else slope·x (slope >= 0), a new array like x; the product in x's dtype, as PyTorch's."""
    y = np.empty(x.shape, dtype=x.dtype)
    _leaky_relu(_flat(x), x.dtype.type(slope), y.reshape(-1))
    return y


def leaky_relu_grad(dy: np.ndarray, y: np.ndarray, slope: float) -> np.ndarray:
    """The gradient through a leaky ReLU whose output was ``y``: dy where y > 0 (exactly where x > 0, the slope
    being >= 0), else slope·dy."""
    if dy.shape != y.shape:
        raise ValueError(f"dy {dy.shape} and y {y.shape} must have one shape")
    dx = np.empty(dy.shape, dtype=dy.dtype)
    _leaky_relu_grad(_flat(dy), _flat(y).astype(dy.dtype, copy=False), dy.dtype.type(slope), dx.reshape(-1))
    return dx


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1/(1 + e^-x) elementwise, in x's dtype; split by sign so that e^-x never overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    """e^z / Σ e^z along ``axis`` (the classes), through z − max(z) so that e^z never overflows."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    """ln softmax(z) along ``axis``, as z − max(z) − ln Σ e^(z − max(z)): finite where softmax underflows to 0."""
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
