"""The fused NCHW block: convolution + bias + activation + tiled average pooling in one pass each way.

LeNet-style networks spend more time in the passes *between* their GEMMs than
in the GEMMs: storing the convolution's output, adding the bias, the
activation, the pooling and, going back, the same four in reverse plus the
bias gradient, each one a trip through memory and a Numba launch. A
:class:`Block` does a convolution (stride 1, no dilation, one group), its
activation (ReLU or tanh, or none) and an optional average pooling with
non-overlapping ``k x k`` tiles (kernel = stride, no padding) as

* forward: pad + unfold a chunk of the batch, one GEMM, then one kernel that
  adds the bias, applies the activation, crops the junk columns, writes the
  activation and averages its tiles; layers with few weights
  (:func:`cnncli.engine.rules.direct_weights`, LeNet-5's first) skip the
  column matrix and the GEMM for direct loops;
* backward: one kernel spreads the pooled gradient over its tiles, multiplies
  by the activation's derivative and lays it out for the GEMMs (the bias
  gradient is one row sum of that), then the weight-gradient GEMM (or direct
  loops) and, only when the block's input needs a gradient, the
  input-gradient GEMM and a fold (or direct loops). Small layers keep their
  column matrices from the forward pass (:func:`cnncli.engine.rules.keep_cols`)
  instead of unfolding again.

The kernels use numpy's float error model (:data:`cnncli.engine.jit.VECTOR_FLAGS`),
without which no loop that divides or takes a min/max is vectorised, and the
float32 tanh of :mod:`cnncli.engine.fast.vector`. Big batches of small layers
run in :mod:`cnncli.engine.fast.lanes` instead; this block takes small batches
and big layers (VGG-16).

Layout and conventions are those of :mod:`cnncli.engine.conv.general` (NCHW, weights
``(F, C, KH, KW)``, PyTorch's results), whose pad and unfold kernels it uses at
stride and dilation 1, and whose chunked unfold + GEMM backward pass
(``chunks_backward``) it runs after its own activation and pooling gradient;
the block's pitch and chunks are the chain's :class:`~cnncli.engine.conv.Call`'s.
The block keeps its input, the activation and
the small column matrices for the backward pass. Every kernel writes disjoint
slices and sums in a fixed order, so results are the same run to run; scratch
buffers are per thread, so that blocks of two network replicas can run at the
same time on different threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnncli.engine import rules
from cnncli.engine.arrays import scratch
from cnncli.engine.conv.general import Geometry, chunks_backward, nchw_pad, nchw_unfold
from cnncli.engine.conv.geometry import Call
from cnncli.engine.fast.vector import ACTIVATIONS, row5, tanh32
from cnncli.engine.jit import vector_kernel, vector_parallel_kernel
from cnncli.engine.pool import tile_mean_plane
from cnncli.engine.threads import matmul

__all__ = ["Block"]


def _scratch(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable buffer from the engine's per-thread workspace: the general convolution's slots (``xp``,
    ``cols``, ``out``), whose chunked backward pass this block runs, so that the two share one set of buffers
    (none is in use across a call)."""
    return scratch(slot, shape, dtype)


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


@vector_kernel
def _activate_rows(src, pitch, bias, dst, act, exact):
    # dst[oh, ow] = act(src[oh * pitch + ow] + bias): 1 ReLU, 2 tanh (exact:
    # math.tanh, for float64; else tanh32), 0 none.
    zero = dst.dtype.type(0)
    ow_ = dst.shape[1]
    for oh in range(dst.shape[0]):
        row = dst[oh]
        partial = src[oh * pitch : oh * pitch + ow_]
        if act == 2 and not exact:
            for ow in range(ow_):
                row[ow] = tanh32(partial[ow] + bias)
        elif act == 2:
            for ow in range(ow_):
                row[ow] = math.tanh(partial[ow] + bias)
        elif act == 1:
            for ow in range(ow_):
                row[ow] = max(partial[ow] + bias, zero)
        else:
            for ow in range(ow_):
                row[ow] = partial[ow] + bias


@vector_parallel_kernel
def _bias_act(ybuf, b, a, p, n0, pitch, act, k, exact):
    # GEMM output (F, n, Q) -> a (N, F, OH, OW): junk columns dropped, bias
    # added, activation applied; then, with k > 0, the tiled average into p.
    f_ = ybuf.shape[0]
    has_bias = b.shape[0] > 0
    for job in prange(ybuf.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        bias = b[f] if has_bias else a.dtype.type(0)
        plane = a[n0 + n, f]
        _activate_rows(ybuf[f, n], pitch, bias, plane, act, exact)
        if k > 0:
            tile_mean_plane(plane, p[n0 + n, f], k, np.empty(p.shape[3] * k, dtype=a.dtype))


@vector_parallel_kernel
def _fused_direct_forward(xp, w, b, a, p, n0, act, k, exact):
    # For layers with few weights (flat taps, pitch = Wp): each sample's
    # filters accumulate their taps' shifted runs of the padded plane straight
    # into one row (bias first), then the activation, the junk crop and the
    # pooling as in _bias_act.
    f_ = w.shape[0]
    c_ = w.shape[1]
    kh_ = w.shape[2]
    kw_ = w.shape[3]
    wp_ = xp.shape[3]
    oh_ = a.shape[2]
    ow_ = a.shape[3]
    q_ = (oh_ - 1) * wp_ + ow_
    zero = a.dtype.type(0)
    has_bias = b.shape[0] > 0
    for n in prange(xp.shape[0]):
        acc = np.empty(q_, dtype=a.dtype)
        acc2 = np.empty(q_, dtype=a.dtype)
        band = np.empty(p.shape[3] * k, dtype=a.dtype)
        for f in range(0, f_, 2):
            # two filters per pass (the second may be f itself, computed twice
            # and dropped): each load of the input feeds both
            f2 = min(f + 1, f_ - 1)
            acc[:] = b[f] if has_bias else zero
            acc2[:] = b[f2] if has_bias else zero
            for c in range(c_):
                flat = xp[n, c].reshape(-1)
                for i in range(kh_):
                    if kw_ == 5:
                        # a kernel row's five taps per pass: one load and store of acc
                        w0, w1, w2, w3, w4 = row5(w, f, c, i)
                        v0, v1, v2, v3, v4 = row5(w, f2, c, i)
                        src = flat[i * wp_ : i * wp_ + q_ + 4]
                        for q in range(q_):
                            s0 = src[q]
                            s1 = src[q + 1]
                            s2 = src[q + 2]
                            s3 = src[q + 3]
                            s4 = src[q + 4]
                            acc[q] += w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3 + w4 * s4
                            acc2[q] += v0 * s0 + v1 * s1 + v2 * s2 + v3 * s3 + v4 * s4
                        continue
                    for j in range(kw_):
                        wv = w[f, c, i, j]
                        vv = w[f2, c, i, j]
                        src = flat[i * wp_ + j : i * wp_ + j + q_]
                        for q in range(q_):
                            acc[q] += wv * src[q]
                            acc2[q] += vv * src[q]
            plane = a[n0 + n, f]
            _activate_rows(acc, wp_, zero, plane, act, exact)
            if k > 0:
                tile_mean_plane(plane, p[n0 + n, f], k, band)
            if f2 != f:
                plane = a[n0 + n, f2]
                _activate_rows(acc2, wp_, zero, plane, act, exact)
                if k > 0:
                    tile_mean_plane(plane, p[n0 + n, f2], k, band)


@vector_parallel_kernel
def _fused_direct_dw(xp, dyt, dw, first):
    # Weight gradient of layers with few weights (flat taps), without a column
    # matrix: one job per (filter, channel, kernel row) sums over the chunk's
    # samples the dot products of the gradient row with the shifted input;
    # five taps of a kernel row at a time share each load of the gradient.
    # first: overwrite dw, else add to it (later chunks).
    f_ = dw.shape[0]
    c_ = dw.shape[1]
    kh_ = dw.shape[2]
    kw_ = dw.shape[3]
    wp_ = xp.shape[3]
    q_ = dyt.shape[2]
    zero = dw.dtype.type(0)
    for job in prange(f_ * c_ * kh_):
        f = job // (c_ * kh_)
        r = job - f * (c_ * kh_)
        c = r // kh_
        i = r - c * kh_
        j0 = 0
        while j0 < kw_:
            wide = min(5, kw_ - j0)
            t0 = zero
            t1 = zero
            t2 = zero
            t3 = zero
            t4 = zero
            for n in range(xp.shape[0]):
                g = dyt[f, n]
                flat = xp[n, c].reshape(-1)
                off = i * wp_ + j0
                a0 = zero
                a1 = zero
                a2 = zero
                a3 = zero
                a4 = zero
                if wide == 5:
                    src = flat[off : off + q_ + 4]
                    for q in range(q_):
                        gq = g[q]
                        a0 += gq * src[q]
                        a1 += gq * src[q + 1]
                        a2 += gq * src[q + 2]
                        a3 += gq * src[q + 3]
                        a4 += gq * src[q + 4]
                else:
                    src = flat[off : off + q_]
                    for q in range(q_):
                        a0 += g[q] * src[q]
                t0 += a0
                t1 += a1
                t2 += a2
                t3 += a3
                t4 += a4
            if wide == 5:
                sums = (t0, t1, t2, t3, t4)
                for t in range(5):
                    if first:
                        dw[f, c, i, j0 + t] = sums[t]
                    else:
                        dw[f, c, i, j0 + t] += sums[t]
                j0 += 5
            else:
                if first:
                    dw[f, c, i, j0] = t0
                else:
                    dw[f, c, i, j0] += t0
                j0 += 1


@vector_parallel_kernel
def _fused_direct_dx(dyt, w, dxp, dx, n0, ph, pw):
    # Input gradient without a column matrix (flat taps): one job per sample
    # adds, for every filter, its gradient row times each tap's weight into the
    # shifted runs of the padded planes, then crops the padding off into dx
    # (skipped when dxp is dx's own chunk). With 5-wide kernel rows each output
    # cell gathers the row's five taps at once from a zero-bordered copy of
    # the gradient row.
    f_ = w.shape[0]
    c_ = w.shape[1]
    kh_ = w.shape[2]
    kw_ = w.shape[3]
    wp_ = dxp.shape[3]
    h_ = dx.shape[2]
    w_ = dx.shape[3]
    q_ = dyt.shape[2]
    zero = dxp.dtype.type(0)
    crop = ph > 0 or pw > 0
    for n in prange(dxp.shape[0]):
        for c in range(c_):
            dxp[n, c].reshape(-1)[:] = zero
        srcp = np.empty(q_ + 8, dtype=dxp.dtype)
        srcp[:4] = zero
        srcp[q_ + 4 :] = zero
        for f in range(f_):
            g = dyt[f, n]
            srcp[4 : q_ + 4] = g
            for c in range(c_):
                flat = dxp[n, c].reshape(-1)
                for i in range(kh_):
                    if kw_ == 5:
                        w0, w1, w2, w3, w4 = row5(w, f, c, i)
                        dst = flat[i * wp_ : i * wp_ + q_ + 4]
                        for r in range(q_ + 4):
                            dst[r] += (w0 * srcp[r + 4] + w1 * srcp[r + 3] + w2 * srcp[r + 2]
                                       + w3 * srcp[r + 1] + w4 * srcp[r])
                        continue
                    for j in range(kw_):
                        wv = w[f, c, i, j]
                        dst = flat[i * wp_ + j : i * wp_ + j + q_]
                        for q in range(q_):
                            dst[q] += wv * g[q]
        if crop:
            for c in range(c_):
                plane = dxp[n, c]
                out = dx[n0 + n, c]
                for r in range(h_):
                    out[r, :] = plane[ph + r, pw : pw + w_]


@vector_parallel_kernel
def _fused_act_grad(g, a, dyt, n0, pitch, k, act):
    # dz = (the pooled gradient spread over its k x k tile, or g itself when
    # k == 0) * act'(a), laid out as the GEMMs' (F, n, Q) with junk zeroed.
    # A pooled row is spread once into a full-width row that its k output
    # rows then share, so the per-cell loops run contiguous and vectorised.
    f_ = dyt.shape[0]
    kk = max(k, 1)
    inv = a.dtype.type(1.0 / (kk * kk))
    zero = a.dtype.type(0)
    one = a.dtype.type(1)
    wide = g.shape[3] * kk  # columns (and, below, rows) that reach the output
    for job in prange(dyt.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        src = a[n0 + n, f]
        gs = g[n0 + n, f]
        dst = dyt[f, n]
        dst[:] = zero
        spread = np.empty(wide, dtype=a.dtype)
        for i in range(g.shape[2]):
            grow = gs[i]
            if k > 0:
                for j in range(g.shape[3]):
                    share = grow[j] * inv
                    for t in range(kk):
                        spread[j * kk + t] = share
            else:
                spread[:] = grow
            for oh in range(i * kk, i * kk + kk):
                arow = src[oh]
                out = dst[oh * pitch : oh * pitch + wide]
                if act == 2:
                    for ow in range(wide):
                        av = arow[ow]
                        out[ow] = spread[ow] * (one - av * av)
                elif act == 1:
                    for ow in range(wide):
                        out[ow] = spread[ow] if arow[ow] > zero else zero
                else:
                    out[:] = spread


# ---------------------------------------------------------------------------
# the block
# ---------------------------------------------------------------------------


class Block:
    """Convolution (+ bias) + activation + optional tiled average pooling, fused.

    ``kernel`` (KH, KW) and ``padding`` (PH, PW) describe the convolution
    (stride 1, dilation 1, groups 1); ``act`` is None, ``"relu"`` or ``"tanh"``;
    ``pool`` is the tile size k, or 0 for none. Call :meth:`forward` then
    :meth:`backward`; the block keeps its input and activation in between.
    """

    def __init__(self, padding, act: str | None, pool: int):
        self.ph, self.pw = padding
        self.act = act
        self.code = ACTIVATIONS[act]
        self.pool = int(pool)
        # A batch whose column matrices (all chunks) are small enough
        # (rules.keep_cols) keeps them for the backward pass in this buffer of
        # the block's own, saving an unfold per step; bigger ones (VGG-16's)
        # unfold again rather than hold memory.
        self._cols: np.ndarray | None = None
        self.kept: list[np.ndarray] | None = None

    def _geometry(self, x: np.ndarray, w: np.ndarray) -> None:
        # The chain's convolution as the picker sees it: its pitch (whole padded rows unless the junk would cost
        # more GEMM work than a row-by-row gather), chunks and direct loops (direct_dw) by the general rules.
        self.call = Call(x.shape, w.shape, (1, 1), (self.ph, self.pw), (1, 1), 1, x.itemsize,
                         chain=(self.act, self.pool))
        for name in ("hp", "wp", "oh", "ow", "pitch", "q", "step"):
            setattr(self, name, getattr(self.call, name))
        self.taps = self.call.c * self.call.kh * self.call.kw
        self.direct = self.call.direct_dw

    def _padded(self, x: np.ndarray, n0: int, nc: int) -> np.ndarray:
        if self.ph == 0 and self.pw == 0:
            return x[n0 : n0 + nc]
        xp = _scratch("xp", (nc, x.shape[1], self.hp, self.wp), x.dtype)
        nchw_pad(x, n0, xp, self.ph, self.pw)
        return xp

    def _unfolded(self, xp: np.ndarray, kh: int, kw: int, nc: int) -> np.ndarray:
        cols = _scratch("cols", (self.taps, nc, self.q), xp.dtype)
        nchw_unfold(xp, cols, kh, kw, 1, 1, 1, 1, self.oh, self.ow, self.pitch)
        return cols

    def release(self) -> None:
        """Drop what the last forward pass kept for a backward pass (an inference pass needs none)."""
        for name in ("x", "a", "kept"):
            setattr(self, name, None)

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """x (N, C, H, W) -> (activation (N, F, OH, OW), output: pooled (N, F, OH//k, OW//k) or the activation)."""
        x = np.ascontiguousarray(x)
        w = np.ascontiguousarray(w)
        self._geometry(x, w)
        self.x = x
        n = x.shape[0]
        f, _, kh, kw = w.shape
        dtype = x.dtype
        bias = np.empty(0, dtype=dtype) if b is None else b
        a = np.empty((n, f, self.oh, self.ow), dtype=dtype)
        k = self.pool
        p = np.empty((n, f, self.oh // k, self.ow // k) if k else (1, 1, 1, 1), dtype=dtype)
        exact = dtype != np.float32  # float64 (checks) takes math.tanh
        w2 = w.reshape(f, self.taps)
        self.kept = None
        size = self.taps * n * self.q
        if not self.direct and rules.keep_cols(self.taps * self.q * x.itemsize, n):
            if self._cols is None or self._cols.size < size or self._cols.dtype != dtype:
                self._cols = np.empty(size, dtype=dtype)
            self.kept = []
        for n0 in range(0, n, self.step):
            nc = min(self.step, n - n0)
            if self.direct:
                _fused_direct_forward(self._padded(x, n0, nc), w, bias, a, p, n0, self.code, self.pool, exact)
                continue
            if self.kept is not None:
                span = self._cols[self.taps * n0 * self.q : self.taps * (n0 + nc) * self.q]
                cols = span.reshape(self.taps, nc, self.q)
                self.kept.append(cols)
                nchw_unfold(self._padded(x, n0, nc), cols, kh, kw, 1, 1, 1, 1, self.oh, self.ow, self.pitch)
            else:
                cols = self._unfolded(self._padded(x, n0, nc), kh, kw, nc)
            ybuf = _scratch("out", (f, nc, self.q), dtype)
            matmul(w2, cols.reshape(self.taps, nc * self.q), out=ybuf.reshape(f, nc * self.q))
            _bias_act(ybuf, bias, a, p, n0, self.pitch, self.code, self.pool, exact)
        self.a = a
        return a, (p if self.pool else a)

    def backward(self, g: np.ndarray, w: np.ndarray, need_dx: bool = True, need_db: bool = True):
        """g = dL/d(output) -> (dx or None, dw (F, C, KH, KW), db (F,) or None)."""
        x, a = self.x, self.a
        g = np.ascontiguousarray(g)
        w = np.ascontiguousarray(w)
        n = x.shape[0]
        f = w.shape[0]
        dtype = x.dtype
        dx = np.empty_like(x) if need_dx else None
        db = np.zeros(f, dtype=dtype) if need_db else None
        dw = np.empty_like(w)

        def load(n0: int, dyt: np.ndarray) -> None:
            # the chunk's gradient before the activation and pooling, laid out for the GEMMs; its row sums: db's
            _fused_act_grad(g, a, dyt, n0, self.pitch, self.pool, self.code)
            if db is not None:
                db[:] += dyt.reshape(f, -1).sum(axis=1)

        if not self.direct:
            # unfold (or the kept columns) + GEMMs, the general convolution's chunked backward pass
            chunks_backward(Geometry(x, w, self.call), None, dx, dw, load, self.kept)
            return dx, dw, db
        # Fixed chunks, fixed order: the same sums on every run.
        for n0 in range(0, n, self.step):
            nc = min(self.step, n - n0)
            dyt = _scratch("out", (f, nc, self.q), dtype)
            load(n0, dyt)
            _fused_direct_dw(self._padded(x, n0, nc), dyt, dw, n0 == 0)
            if dx is None:
                continue
            if self.ph == 0 and self.pw == 0:
                dxp = dx[n0 : n0 + nc]
            else:
                dxp = _scratch("xp", (nc, x.shape[1], self.hp, self.wp), dtype)  # the padded input is spent
            _fused_direct_dx(dyt, w, dxp, dx, n0, self.ph, self.pw)
        return dx, dw, db
