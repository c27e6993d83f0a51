"""Fused convolution blocks with the batch as the innermost axis: vector lanes for small layers.

:class:`cnncli.engine.fast.fused.Block` keeps PyTorch's NCHW layout. On LeNet-sized
layers that leaves the vector units idle: a 10 x 10 output plane is rows of
10 numbers, so the activation, the pooling and their gradients run loops of
10 with scalar remainders, and the flat-tap unfold pads every row with junk
columns that the GEMMs then compute (a third more work on LeNet-5's second layer).

This block lays a batch out as (C, H, W, N), the batch innermost (as
cuda-convnet did): every pixel is a vector of N numbers, one per sample. Then

* an unfolded tap is, per output row, one contiguous run of OW*N numbers
  (no junk columns: the GEMMs do only the work of the convolution);
* bias, activation, pooling and their gradients run over whole vectors;
* layers with few weights (:func:`cnncli.engine.rules.direct_weights`, LeNet-5's first) skip
  the column matrix: each output row adds its taps' shifted input rows, again
  contiguous runs, and the weight gradient is a dot product of such runs.

The block hands out its output, activation and input gradient as NCHW-shaped
*views* of its batch-innermost arrays: a following block reads them back as
contiguous runs (LeNet-5's two blocks pass their tensors without a transpose),
and any other layer gets numpy's copy (the kernels' wrappers make their inputs
contiguous).

:meth:`Block.fits` says when it applies (:func:`cnncli.engine.rules.lanes`): a
vector's worth of samples and a column matrix (kept for the backward pass)
that is small enough; otherwise :class:`~cnncli.engine.layers.FusedConv` uses
:class:`cnncli.engine.fast.fused.Block`. Same arithmetic, same conventions
(stride 1, no dilation, one group; tiled average pooling; PyTorch's results);
the sums run in a fixed order, so results repeat bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnncli.engine import rules
from cnncli.engine.fast.vector import ACTIVATIONS, row5, tanh32
from cnncli.engine.jit import vector_kernel, vector_parallel_kernel
from cnncli.engine.threads import matmul

__all__ = ["Block"]


# ---------------------------------------------------------------------------
# layout change
# ---------------------------------------------------------------------------


@vector_parallel_kernel
def _to_lanes(x, xp, ph, pw):
    # x (N, C, H, W), any strides -> xp (C, H + 2ph, W + 2pw, N), zero border.
    n_, c_, h_, w_ = x.shape
    hp_ = xp.shape[1]
    zero = xp.dtype.type(0)
    for job in prange(c_ * hp_):
        c = job // hp_
        r = job - c * hp_
        row = xp[c, r]
        h = r - ph
        if h < 0 or h >= h_:
            row[:, :] = zero
            continue
        row[:pw, :] = zero
        row[pw + w_ :, :] = zero
        for w in range(w_):
            dst = row[pw + w]
            for n in range(n_):
                dst[n] = x[n, c, h, w]


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------


@vector_parallel_kernel
def _lanes_unfold(xp, cols, kh_, kw_):
    # cols (C*KH*KW, OH, OW*N): tap (c, i, j), output row oh = xp[c, oh+i, j:j+OW, :], one run.
    c_ = xp.shape[0]
    n_ = xp.shape[3]
    oh_ = cols.shape[1]
    run = cols.shape[2]
    for job in prange(c_ * kh_):
        c = job // kh_
        i = job - c * kh_
        for j in range(kw_):
            tap = (c * kh_ + i) * kw_ + j
            for oh in range(oh_):
                src = xp[c, oh + i].reshape(-1)[j * n_ : j * n_ + run]
                dst = cols[tap, oh]
                for t in range(run):
                    dst[t] = src[t]


@vector_parallel_kernel
def _lanes_direct_forward(xp, w, b, z):
    # z (F, OH, OW, N) = b + sum over taps of w * the tap's shifted input rows (runs of OW*N).
    # A job is an output row of two filters (the second may be the first again,
    # computed once): with 5-wide kernel rows each load of the five shifted
    # input runs feeds both filters' sums.
    f_, c_, kh_, kw_ = w.shape
    oh_ = z.shape[1]
    n_ = z.shape[3]
    run = z.shape[2] * n_
    has_bias = b.shape[0] > 0
    zero = z.dtype.type(0)
    pairs = (f_ + 1) // 2
    for job in prange(pairs * oh_):
        pair = job // oh_
        oh = job - pair * oh_
        f = 2 * pair
        f2 = min(f + 1, f_ - 1)
        two = f2 != f
        acc = z[f, oh].reshape(-1)
        acc2 = z[f2, oh].reshape(-1)
        acc[:] = b[f] if has_bias else zero
        if two:
            acc2[:] = b[f2] if has_bias else zero
        for c in range(c_):
            for i in range(kh_):
                row = xp[c, oh + i].reshape(-1)
                if kw_ == 5:
                    w0, w1, w2, w3, w4 = row5(w, f, c, i)
                    r0 = row[0:run]
                    r1 = row[n_ : n_ + run]
                    r2 = row[2 * n_ : 2 * n_ + run]
                    r3 = row[3 * n_ : 3 * n_ + run]
                    r4 = row[4 * n_ : 4 * n_ + run]
                    if not two:
                        for t in range(run):
                            acc[t] += w0 * r0[t] + w1 * r1[t] + w2 * r2[t] + w3 * r3[t] + w4 * r4[t]
                        continue
                    v0, v1, v2, v3, v4 = row5(w, f2, c, i)
                    for t in range(run):
                        s0 = r0[t]
                        s1 = r1[t]
                        s2 = r2[t]
                        s3 = r3[t]
                        s4 = r4[t]
                        acc[t] += w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3 + w4 * s4
                        acc2[t] += v0 * s0 + v1 * s1 + v2 * s2 + v3 * s3 + v4 * s4
                    continue
                for j in range(kw_):
                    src = row[j * n_ : j * n_ + run]
                    wv = w[f, c, i, j]
                    for t in range(run):
                        acc[t] += wv * src[t]
                    if two:
                        vv = w[f2, c, i, j]
                        for t in range(run):
                            acc2[t] += vv * src[t]


@vector_parallel_kernel
def _lanes_act_pool(z, b, pl, act, k, exact):
    # z (F, OH, OW, N) in place: act(z + b); then, with k > 0, the k x k tile means into pl (F, PH, PW, N).
    f_ = z.shape[0]
    n_ = z.shape[3]
    has_bias = b.shape[0] > 0
    zero = z.dtype.type(0)
    inv = z.dtype.type(1.0 / max(k * k, 1))
    for f in prange(f_):
        flat = z[f].reshape(-1)
        bias = b[f] if has_bias else zero
        if act == 2 and not exact:
            for t in range(flat.shape[0]):
                flat[t] = tanh32(flat[t] + bias)
        elif act == 2:
            for t in range(flat.shape[0]):
                flat[t] = math.tanh(flat[t] + bias)
        elif act == 1:
            for t in range(flat.shape[0]):
                flat[t] = max(flat[t] + bias, zero)
        elif has_bias:
            for t in range(flat.shape[0]):
                flat[t] += bias
        if k == 0:
            continue
        for i in range(pl.shape[1]):
            for j in range(pl.shape[2]):
                out = pl[f, i, j]
                if k == 2:  # LeNet's tiles: one pass
                    s00 = z[f, 2 * i, 2 * j]
                    s01 = z[f, 2 * i, 2 * j + 1]
                    s10 = z[f, 2 * i + 1, 2 * j]
                    s11 = z[f, 2 * i + 1, 2 * j + 1]
                    for t in range(n_):
                        out[t] = ((s00[t] + s01[t]) + (s10[t] + s11[t])) * inv
                    continue
                out[:] = zero
                for r in range(k):
                    for s in range(k):
                        src = z[f, i * k + r, j * k + s]
                        for t in range(n_):
                            out[t] += src[t]
                for t in range(n_):
                    out[t] *= inv


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------


@vector_parallel_kernel
def _lanes_act_grad(gl, z, dz, k, act):
    # dz (F, OH, OW, N) = (gl (F, ., ., N) spread over its k x k tile / k², or gl itself when k == 0)
    # * act'(z); cells beyond the last whole tile get zero.
    f_, oh_, ow_, n_ = dz.shape
    kk = max(k, 1)
    inv = dz.dtype.type(1.0 / (kk * kk))
    zero = dz.dtype.type(0)
    one = dz.dtype.type(1)
    gh = gl.shape[1]
    gw = gl.shape[2]
    for job in prange(f_ * oh_):
        f = job // oh_
        oh = job - f * oh_
        i = oh // kk
        for ow in range(ow_):
            dst = dz[f, oh, ow]
            j = ow // kk
            if i >= gh or j >= gw:
                dst[:] = zero
                continue
            src = gl[f, i, j]
            a = z[f, oh, ow]
            if act == 2:
                for n in range(n_):
                    dst[n] = src[n] * inv * (one - a[n] * a[n])
            elif act == 1:
                for n in range(n_):
                    dst[n] = src[n] * inv if a[n] > zero else zero
            else:
                for n in range(n_):
                    dst[n] = src[n] * inv


@vector_parallel_kernel
def _lanes_fold(dcols, dxp, kh_, kw_):
    # The adjoint of _lanes_unfold: dxp (C, Hp, Wp, N) = the taps' runs added in place, a channel per job.
    c_ = dxp.shape[0]
    n_ = dxp.shape[3]
    oh_ = dcols.shape[1]
    run = dcols.shape[2]
    for c in prange(c_):
        dxp[c] = 0.0
        for i in range(kh_):
            for j in range(kw_):
                tap = (c * kh_ + i) * kw_ + j
                for oh in range(oh_):
                    dst = dxp[c, oh + i].reshape(-1)[j * n_ : j * n_ + run]
                    src = dcols[tap, oh]
                    for t in range(run):
                        dst[t] += src[t]


@vector_kernel
def _lanes_dw_row5(xp, dz, dw, f, f2, c, i):
    # dw[f, c, i, :5] and dw[f2, c, i, :5] (f2 may be f): the dot products of
    # dz[f] and dz[f2] with the five shifted input runs, each load shared.
    oh_ = dz.shape[1]
    n_ = dz.shape[3]
    run = dz.shape[2] * n_
    zero = dw.dtype.type(0)
    t0 = zero
    t1 = zero
    t2 = zero
    t3 = zero
    t4 = zero
    u0 = zero
    u1 = zero
    u2 = zero
    u3 = zero
    u4 = zero
    for oh in range(oh_):
        g = dz[f, oh].reshape(-1)
        h = dz[f2, oh].reshape(-1)
        row = xp[c, oh + i].reshape(-1)
        r0 = row[0:run]
        r1 = row[n_ : n_ + run]
        r2 = row[2 * n_ : 2 * n_ + run]
        r3 = row[3 * n_ : 3 * n_ + run]
        r4 = row[4 * n_ : 4 * n_ + run]
        a0 = zero
        a1 = zero
        a2 = zero
        a3 = zero
        a4 = zero
        b0 = zero
        b1 = zero
        b2 = zero
        b3 = zero
        b4 = zero
        for t in range(run):
            gt = g[t]
            ht = h[t]
            s0 = r0[t]
            s1 = r1[t]
            s2 = r2[t]
            s3 = r3[t]
            s4 = r4[t]
            a0 += gt * s0
            a1 += gt * s1
            a2 += gt * s2
            a3 += gt * s3
            a4 += gt * s4
            b0 += ht * s0
            b1 += ht * s1
            b2 += ht * s2
            b3 += ht * s3
            b4 += ht * s4
        t0 += a0
        t1 += a1
        t2 += a2
        t3 += a3
        t4 += a4
        u0 += b0
        u1 += b1
        u2 += b2
        u3 += b3
        u4 += b4
    dw[f, c, i, 0] = t0
    dw[f, c, i, 1] = t1
    dw[f, c, i, 2] = t2
    dw[f, c, i, 3] = t3
    dw[f, c, i, 4] = t4
    dw[f2, c, i, 0] = u0
    dw[f2, c, i, 1] = u1
    dw[f2, c, i, 2] = u2
    dw[f2, c, i, 3] = u3
    dw[f2, c, i, 4] = u4


@vector_parallel_kernel
def _lanes_direct_dw(xp, dz, dw):
    # dw[f, c, i, j] = sum over output rows of dot(dz[f, oh] (a run of OW*N), xp[c, oh+i] shifted by j);
    # a job is a kernel row of two filters (the second may be the first again).
    f_, c_, kh_, kw_ = dw.shape
    oh_ = dz.shape[1]
    n_ = dz.shape[3]
    run = dz.shape[2] * n_
    zero = dw.dtype.type(0)
    pairs = (f_ + 1) // 2
    for job in prange(pairs * c_ * kh_):
        pair = job // (c_ * kh_)
        rest = job - pair * (c_ * kh_)
        c = rest // kh_
        i = rest - c * kh_
        f = 2 * pair
        f2 = min(f + 1, f_ - 1)
        if kw_ == 5:
            _lanes_dw_row5(xp, dz, dw, f, f2, c, i)
            continue
        for ff in (f, f2):
            for j in range(kw_):
                total = zero
                for oh in range(oh_):
                    g = dz[ff, oh].reshape(-1)
                    src = xp[c, oh + i].reshape(-1)[j * n_ : j * n_ + run]
                    acc = zero
                    for t in range(run):
                        acc += g[t] * src[t]
                    total += acc
                dw[ff, c, i, j] = total


@vector_parallel_kernel
def _lanes_direct_dx(dz, w, dxp):
    # dxp (C, Hp, Wp, N) = for every filter and tap, w * dz[f, oh] added at the tap's shifted rows.
    f_, c_, kh_, kw_ = w.shape
    oh_ = dz.shape[1]
    n_ = dz.shape[3]
    run = dz.shape[2] * n_
    for c in prange(c_):
        dxp[c] = 0.0
        for f in range(f_):
            for i in range(kh_):
                for j in range(kw_):
                    wv = w[f, c, i, j]
                    for oh in range(oh_):
                        g = dz[f, oh].reshape(-1)
                        dst = dxp[c, oh + i].reshape(-1)[j * n_ : j * n_ + run]
                        for t in range(run):
                            dst[t] += wv * g[t]


# ---------------------------------------------------------------------------
# the block
# ---------------------------------------------------------------------------


class Block:
    """Convolution (+ bias) + activation + optional tiled average pooling in the batch-innermost layout.

    The interface of :class:`cnncli.engine.fast.fused.Block`: ``padding`` (PH, PW), ``act``
    None, ``"relu"`` or ``"tanh"``, ``pool`` the tile size k or 0; call
    :meth:`forward` then :meth:`backward`. Check :meth:`fits` first.
    """

    def __init__(self, padding, act: str | None, pool: int):
        self.ph, self.pw = padding
        self.code = ACTIVATIONS[act]
        self.pool = int(pool)

    @staticmethod
    def fits(x_shape: tuple[int, ...], w_shape: tuple[int, ...], padding, itemsize: int) -> bool:
        """Whether this layout pays for a batch of ``x_shape`` (N, C, H, W) and weights (F, C, KH, KW)."""
        n, c, h, w = x_shape
        f, _, kh, kw = w_shape
        oh, ow = h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1
        return rules.lanes(n, f * c * kh * kw, c * kh * kw * oh * ow * n * itemsize)

    def release(self) -> None:
        """Drop what the last forward pass kept for a backward pass (an inference pass needs none)."""
        for name in ("xp", "cols", "z"):
            setattr(self, name, None)

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """x (N, C, H, W) -> (activation (N, F, OH, OW), output: pooled (N, F, OH//k, OW//k) or the activation).

        Both are views of the block's batch-innermost arrays (strides (1, ...) in
        elements along N), not copies: a following block reads them back into its
        layout as contiguous runs, and numpy (or a kernel's wrapper) copies them
        for any other layer. ``x`` may be such a view too.
        """
        w = np.ascontiguousarray(w)
        n, c, h, wd = x.shape
        f, _, kh, kw = w.shape
        dtype = x.dtype
        hp, wp = h + 2 * self.ph, wd + 2 * self.pw
        oh, ow = hp - kh + 1, wp - kw + 1
        self.x_shape = x.shape
        self.xp = xp = np.empty((c, hp, wp, n), dtype=dtype)
        _to_lanes(x, xp, self.ph, self.pw)
        self.direct = rules.direct_weights(w.size)
        z = np.empty((f, oh, ow, n), dtype=dtype)
        bias = np.empty(0, dtype=dtype) if b is None else b
        if self.direct:
            _lanes_direct_forward(xp, w, bias, z)
            bias = np.empty(0, dtype=dtype)  # added already
            self.cols = None
        else:
            self.cols = cols = np.empty((c * kh * kw, oh, ow * n), dtype=dtype)
            _lanes_unfold(xp, cols, kh, kw)
            matmul(w.reshape(f, -1), cols.reshape(c * kh * kw, -1), out=z.reshape(f, -1))
        k = self.pool
        pl = np.empty((f, oh // k, ow // k, n) if k else (f, 1, 1, 1), dtype=dtype)
        _lanes_act_pool(z, bias, pl, self.code, k, dtype != np.float32)
        self.z = z
        a = z.transpose(3, 0, 1, 2)
        return a, (pl.transpose(3, 0, 1, 2) if k else a)

    def backward(self, g: np.ndarray, w: np.ndarray, need_dx: bool = True, need_db: bool = True):
        """g = dL/d(output) (N, F, ., .) -> (dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,) or None).

        ``g`` may be a view in any layout; ``dx`` is a view of a batch-innermost array.
        """
        w = np.ascontiguousarray(w)
        z, xp = self.z, self.xp
        f, c, kh, kw = w.shape
        gl = np.empty((g.shape[1], g.shape[2], g.shape[3], g.shape[0]), dtype=z.dtype)
        _to_lanes(g, gl, 0, 0)
        dz = np.empty_like(z)
        _lanes_act_grad(gl, z, dz, self.pool, self.code)
        dz2 = dz.reshape(f, -1)
        db = dz2.sum(axis=1) if need_db else None
        if self.direct:
            dw = np.empty_like(w)
            _lanes_direct_dw(xp, dz, dw)
        elif rules.dw_transposed(f):
            dw = np.ascontiguousarray(matmul(self.cols.reshape(c * kh * kw, -1), dz2.T).T).reshape(w.shape)
        else:
            dw = matmul(dz2, self.cols.reshape(c * kh * kw, -1).T).reshape(w.shape)
        if not need_dx:
            return None, dw, db
        dxp = np.empty_like(xp)
        if self.direct:
            _lanes_direct_dx(dz, w, dxp)
        else:
            dcols = np.empty_like(self.cols)
            matmul(w.reshape(f, -1).T, dz2, out=dcols.reshape(c * kh * kw, -1))
            _lanes_fold(dcols, dxp, kh, kw)
        _, _, h, wd = self.x_shape
        dx = dxp[:, self.ph : self.ph + h, self.pw : self.pw + wd, :].transpose(3, 0, 1, 2)
        return dx, dw, db
