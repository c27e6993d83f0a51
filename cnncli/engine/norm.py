"""Batch normalization kernels: per-channel statistics, normalise + scale + shift, and the gradients.

An input (N, C, ...) is viewed as (N, C, L), L the product of its spatial
sizes (1 after a dense layer). Each kernel makes one pass over the data where
numpy makes several (a mean, a variance, a subtraction, a product, a sum, each
a trip through memory). Sums over a channel are accumulated in float64 in a
fixed order, so results repeat bit for bit; work is split by channel, or by
(sample, channel) row, each writing only its own slice.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnncli.engine.arrays import array
from cnncli.engine.jit import parallel_kernel

__all__ = ["backward", "batch_stats", "forward"]


@parallel_kernel
def _stats(x, mean, var):
    n_, c_, l_ = x.shape
    count = n_ * l_
    for c in prange(c_):
        s = 0.0
        for n in range(n_):
            row = x[n, c]
            for i in range(l_):
                s += row[i]
        m = s / count
        q = 0.0
        for n in range(n_):
            row = x[n, c]
            for i in range(l_):
                d = row[i] - m
                q += d * d
        mean[c] = m
        var[c] = q / count


@parallel_kernel
def _normalise(x, mean, inv_std, w, b, xhat, y):
    n_, c_, l_ = x.shape
    for job in prange(n_ * c_):
        n = job // c_
        c = job - n * c_
        m, k, wc, bc = mean[c], inv_std[c], w[c], b[c]
        src, h, out = x[n, c], xhat[n, c], y[n, c]
        for i in range(l_):
            v = (src[i] - m) * k
            h[i] = v
            out[i] = v * wc + bc


@parallel_kernel
def _sums(dy, xhat, sum_dy, sum_dy_xhat):
    n_, c_, l_ = dy.shape
    for c in prange(c_):
        s = 0.0
        t = 0.0
        for n in range(n_):
            g, h = dy[n, c], xhat[n, c]
            for i in range(l_):
                s += g[i]
                t += g[i] * h[i]
        sum_dy[c] = s
        sum_dy_xhat[c] = t


@parallel_kernel
def _input_grad(dy, xhat, w, inv_std, sum_dy, sum_dy_xhat, train, dx):
    n_, c_, l_ = dy.shape
    count = n_ * l_
    for job in prange(n_ * c_):
        n = job // c_
        c = job - n * c_
        scale = w[c] * inv_std[c]
        g, h, out = dy[n, c], xhat[n, c], dx[n, c]
        if train:
            # dx = w·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂)), the batch statistics' own gradient included
            a = dy.dtype.type(sum_dy[c] / count)
            bb = dy.dtype.type(sum_dy_xhat[c] / count)
            for i in range(l_):
                out[i] = (g[i] - a - h[i] * bb) * scale
        else:
            for i in range(l_):
                out[i] = g[i] * scale


def _view(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, C, ...), got shape {x.shape}")
    return array(name, x, x.ndim).reshape(x.shape[0], x.shape[1], -1)


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, C, ...) → (mean, biased variance) per channel, float64 (C,)."""
    x3 = _view("x", x)
    mean = np.empty(x3.shape[1])
    var = np.empty(x3.shape[1])
    _stats(x3, mean, var)
    return mean, var


def forward(x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, w: np.ndarray,
            b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, C, ...); mean, inv_std, w, b (C,) → (y, x̂), both the shape of x: x̂ = (x − mean)·inv_std, y = x̂·w + b."""
    x3 = _view("x", x)
    dtype = x3.dtype
    xhat = np.empty_like(x3)
    y = np.empty_like(x3)
    _normalise(x3, *(np.ascontiguousarray(a, dtype=dtype) for a in (mean, inv_std, w, b)), xhat, y)
    return y.reshape(x.shape), xhat.reshape(x.shape)


def backward(dy: np.ndarray, xhat: np.ndarray, w: np.ndarray, inv_std: np.ndarray,
             train: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`forward`: dy, x̂ (N, C, ...) → (dx like dy, dw (C,), db (C,)).

    ``train``: the mean and variance were the batch's own (their gradient flows
    into dx); else they were fixed (running statistics).
    """
    dy3, h3 = _view("dy", dy), _view("xhat", xhat)
    if dy3.shape != h3.shape or dy3.dtype != h3.dtype:
        raise ValueError(f"dy {dy.shape} {dy.dtype} and xhat {xhat.shape} {xhat.dtype} must agree")
    c_ = dy3.shape[1]
    sum_dy, sum_dy_xhat = np.empty(c_), np.empty(c_)
    _sums(dy3, h3, sum_dy, sum_dy_xhat)
    dx = np.empty_like(dy3)
    _input_grad(dy3, h3, np.ascontiguousarray(w, dtype=np.float64), np.ascontiguousarray(inv_std, dtype=np.float64),
                sum_dy, sum_dy_xhat, bool(train), dx)
    return dx.reshape(dy.shape), sum_dy_xhat.astype(dy.dtype), sum_dy.astype(dy.dtype)
