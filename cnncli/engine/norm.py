"""Batch normalization kernels: per-channel statistics, normalise + scale + shift, and the gradients.

An input (N, C, ...) is viewed as (N, C, L), L the product of its spatial
sizes (1 after a dense layer); a *row* is one sample's L values of one
channel. Statistics are built in two steps, so that a batch split into parts
(:mod:`cnncli.engine.parts`) gets the same bits as the whole batch:

1. each row's own sums (:func:`row_moments`, :func:`grad_rows`), computed
   from that row alone, in float64, vectorised in an order fixed by the row's
   length (:func:`cnncli.engine.jit.reduce_parallel_kernel`: a sum must not
   depend on where the row sits in memory);
2. the rows of the whole batch combined in batch order (:func:`moments`,
   :func:`totals`): a part hands its rows to the others
   (:class:`cnncli.engine.batch.Place`), so every part combines the same rows
   in the same order.

The mean and variance combine Chan et al.'s way (each row's sum and squared
deviations from its own mean), as stable as a two-pass variance. Each kernel
makes one pass over the data where numpy makes several; work is split by
(sample, channel) row, each writing only its own slice.

x̂ = (x − mean)·inv_std is not stored: the forward pass writes only y, and the
backward kernels compute x̂ again from x, with the same operations in the same
dtype, so they see the very values the forward pass used. The layer keeps x
(its input, alive anyway while a pass may need it) instead of an array of x̂:
the passes are bound by memory traffic, and writing x̂ would be a fourth
stream beside reading x and the statistics and writing y.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnncli.engine.arrays import array
from cnncli.engine.jit import exact_kernel, exact_parallel_kernel, reduce_parallel_kernel

__all__ = ["backward", "batch_stats", "forward", "grad_rows", "input_grad", "moments", "row_moments", "totals"]


@reduce_parallel_kernel
def _row_moments(x, rows):
    n_, c_, l_ = x.shape
    for job in prange(n_ * c_):
        n = job // c_
        c = job - n * c_
        row = x[n, c]
        s = 0.0
        for i in range(l_):
            s += row[i]
        m = s / l_
        q = 0.0
        for i in range(l_):
            d = row[i] - m
            q += d * d
        rows[n, c, 0] = s
        rows[n, c, 1] = q


@reduce_parallel_kernel
def _grad_rows(dy, x, mean, inv_std, y, relu, rows):
    n_, c_, l_ = dy.shape
    zero = dy.dtype.type(0)
    for job in prange(n_ * c_):
        n = job // c_
        c = job - n * c_
        g, src, out = dy[n, c], x[n, c], y[n, c]
        m, k = mean[c], inv_std[c]
        s = 0.0
        t = 0.0
        if relu:  # dy is the folded ReLU's: it passed where the output is > 0
            for i in range(l_):
                gi = g[i] if out[i] > 0 else zero
                s += gi
                t += np.float64(gi) * ((src[i] - m) * k)
        else:
            for i in range(l_):
                s += g[i]
                t += np.float64(g[i]) * ((src[i] - m) * k)
        rows[n, c, 0] = s
        rows[n, c, 1] = t


@exact_kernel
def _moments(rows, per_row, mean, var):
    n_, c_, _ = rows.shape
    count = n_ * per_row
    for c in range(c_):
        s = 0.0
        for n in range(n_):
            s += rows[n, c, 0]
        m = s / count
        q = 0.0
        for n in range(n_):
            d = rows[n, c, 0] / per_row - m
            q += rows[n, c, 1] + per_row * d * d
        mean[c] = m
        var[c] = q / count


@exact_kernel
def _totals(rows, out):
    n_, c_, k_ = rows.shape
    for c in range(c_):
        for k in range(k_):
            s = 0.0
            for n in range(n_):
                s += rows[n, c, k]
            out[c, k] = s


@exact_parallel_kernel
def _normalise(x, mean, inv_std, w, b, relu, y):
    n_, c_, l_ = x.shape
    for job in prange(n_ * c_):
        n = job // c_
        c = job - n * c_
        m, k, wc, bc = mean[c], inv_std[c], w[c], b[c]
        src, out = x[n, c], y[n, c]
        if relu:
            for i in range(l_):
                o = ((src[i] - m) * k) * wc + bc
                out[i] = 0 if o < 0 else o
        else:
            for i in range(l_):
                out[i] = ((src[i] - m) * k) * wc + bc


@exact_parallel_kernel
def _input_grad(dy, x, mean, inv_std, y, relu, w, sum_dy, sum_dy_xhat, count, train, dx):
    n_, c_, l_ = dy.shape
    zero = dy.dtype.type(0)
    for job in prange(n_ * c_):
        n = job // c_
        c = job - n * c_
        m, k = mean[c], inv_std[c]
        scale = w[c] * np.float64(k)
        g, src, out, passed = dy[n, c], x[n, c], dx[n, c], y[n, c]
        # dx = w·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂)) while training (the batch statistics' own gradient
        # included), w·inv_std·dy with fixed statistics; dy through the folded ReLU if there is one
        a = dy.dtype.type(sum_dy[c] / count) if train else zero
        bb = dy.dtype.type(sum_dy_xhat[c] / count) if train else zero
        if relu:
            for i in range(l_):
                gi = g[i] if passed[i] > 0 else zero
                out[i] = (gi - a - ((src[i] - m) * k) * bb) * scale
        else:
            for i in range(l_):
                out[i] = (g[i] - a - ((src[i] - m) * k) * bb) * scale


def _view(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, C, ...), got shape {x.shape}")
    return array(name, x, x.ndim).reshape(x.shape[0], x.shape[1], -1)


def _rows(name: str, rows: np.ndarray) -> np.ndarray:
    if rows.ndim != 3 or rows.shape[2] != 2 or rows.dtype != np.float64:
        raise ValueError(f"{name} must be float64 (N, C, 2), got {rows.dtype} {rows.shape}")
    return np.ascontiguousarray(rows)


def per_row(x_shape: tuple[int, ...]) -> int:
    """How many values one row (a sample's channel) of an input of this shape holds: L."""
    return int(np.prod(x_shape[2:], dtype=np.int64))


def row_moments(x: np.ndarray) -> np.ndarray:
    """x (N, C, ...) → rows (N, C, 2) float64: each row's sum and its squared deviations from its own mean."""
    x3 = _view("x", x)
    rows = np.empty((x3.shape[0], x3.shape[1], 2))
    _row_moments(x3, rows)
    return rows


def moments(rows: np.ndarray, per_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of :func:`row_moments` (N, C, 2), each of ``per_row`` values → (mean, biased variance), float64 (C,).

    The rows are combined in order, so the same rows give the same bits however they were computed.
    """
    rows = _rows("rows", rows)
    mean = np.empty(rows.shape[1])
    var = np.empty(rows.shape[1])
    _moments(rows, int(per_row), mean, var)
    return mean, var


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, C, ...) → (mean, biased variance) per channel, float64 (C,)."""
    return moments(row_moments(x), per_row(x.shape))


def _stats(mean: np.ndarray, inv_std: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    # mean and inv_std as every kernel reads them (x's dtype), so that x̂ is the same bits in each
    return np.ascontiguousarray(mean, dtype=dtype), np.ascontiguousarray(inv_std, dtype=dtype)


def forward(x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, w: np.ndarray,
            b: np.ndarray, relu: bool = False) -> np.ndarray:
    """x (N, C, ...); mean, inv_std, w, b (C,) → y like x: y = x̂·w + b, x̂ = (x − mean)·inv_std.

    ``relu``: y = max(x̂·w + b, 0), the ReLU after the layer in the same pass.
    """
    x3 = _view("x", x)
    dtype = x3.dtype
    y = np.empty_like(x3)
    _normalise(x3, *_stats(mean, inv_std, dtype), *(np.ascontiguousarray(a, dtype=dtype) for a in (w, b)),
               bool(relu), y)
    return y.reshape(x.shape)


def _pair(dy: np.ndarray, x: np.ndarray, relu_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dy3, x3 = _view("dy", dy), _view("x", x)
    if dy3.shape != x3.shape or dy3.dtype != x3.dtype:
        raise ValueError(f"dy {dy.shape} {dy.dtype} and x {x.shape} {x.dtype} must agree")
    if relu_out is None:
        return dy3, x3, dy3  # not read
    y3 = _view("relu_out", relu_out)
    if y3.shape != dy3.shape or y3.dtype != dy3.dtype:
        raise ValueError(f"relu_out {relu_out.shape} {relu_out.dtype} must agree with dy {dy.shape} {dy.dtype}")
    return dy3, x3, y3


def grad_rows(dy: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
              relu_out: np.ndarray | None = None) -> np.ndarray:
    """dy, x (N, C, ...), the forward pass's mean and inv_std (C,) → rows (N, C, 2) float64: each row's Σ dy and
    Σ dy·x̂.

    ``relu_out``: the forward pass's output with the ReLU folded in; dy is
    then the ReLU's and passes where that output is > 0.
    """
    dy3, x3, y3 = _pair(dy, x, relu_out)
    rows = np.empty((dy3.shape[0], dy3.shape[1], 2))
    _grad_rows(dy3, x3, *_stats(mean, inv_std, x3.dtype), y3, relu_out is not None, rows)
    return rows


def totals(rows: np.ndarray) -> np.ndarray:
    """Rows (N, C, 2) → their sums over the batch (C, 2), added in batch order."""
    rows = _rows("rows", rows)
    out = np.empty(rows.shape[1:])
    _totals(rows, out)
    return out


def input_grad(dy: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, w: np.ndarray,
               sums: np.ndarray, count: int, train: bool, relu_out: np.ndarray | None = None) -> np.ndarray:
    """∂E/∂x (like dy) from dy, x (N, C, ...), the forward pass's mean and inv_std (C,) and ``sums`` (C, 2) =
    (Σ dy, Σ dy·x̂) over ``count`` values per channel.

    ``train``: the mean and variance were the batch's own (their gradient flows
    into dx, through ``sums``); else they were fixed (running statistics).
    ``relu_out``: as for :func:`grad_rows`.
    """
    dy3, x3, y3 = _pair(dy, x, relu_out)
    dx = np.empty_like(dy3)
    sums = np.ascontiguousarray(sums, dtype=np.float64)
    _input_grad(dy3, x3, *_stats(mean, inv_std, x3.dtype), y3, relu_out is not None,
                np.ascontiguousarray(w, dtype=np.float64), sums[:, 0].copy(), sums[:, 1].copy(),
                float(count), bool(train), dx)
    return dx.reshape(dy.shape)


def backward(dy: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, w: np.ndarray, train: bool,
             relu_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`forward` over a whole batch: dy, x (N, C, ...), the forward pass's mean and inv_std
    (C,) → (dx like dy, dw (C,), db (C,)).

    ``train``: the mean and variance were the batch's own (their gradient flows
    into dx); else they were fixed (running statistics). ``relu_out``: as for :func:`grad_rows`.
    """
    sums = totals(grad_rows(dy, x, mean, inv_std, relu_out))
    dx = input_grad(dy, x, mean, inv_std, w, sums, dy.shape[0] * per_row(dy.shape), train, relu_out)
    return dx, sums[:, 1].astype(dy.dtype), sums[:, 0].astype(dy.dtype)
